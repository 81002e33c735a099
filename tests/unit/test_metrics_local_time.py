"""Local time: dates as local midnights, and timeseries buckets as local days, ISO weeks and
calendar months across the DST changes of Europe/Madrid and America/New_York (2025), every
expectation computed by hand from the zones' rules:

- Madrid: CET (+01:00) until Sunday March 30, 01:00 UTC (02:00 → 03:00), CEST (+02:00) until
  Sunday October 26, 01:00 UTC (03:00 → 02:00).
- New York: EST (−05:00) until Sunday March 9, 07:00 UTC (02:00 → 03:00), EDT (−04:00) until
  Sunday November 2, 06:00 UTC (02:00 → 01:00).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.metrics.domain import InvalidQuery, Period, bucket_periods, parse_instant, resolve_period, time_zone

MADRID, NEW_YORK = ZoneInfo("Europe/Madrid"), ZoneInfo("America/New_York")
NOW = datetime(2025, 3, 10, 23, 30, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def spans(buckets: list[Period]) -> list[tuple[datetime, datetime, float]]:
    return [(b.start, b.end, (b.end - b.start) / timedelta(hours=1)) for b in buckets]


def series(from_: str, to: str, interval: str, zone: ZoneInfo) -> list[Period]:
    return bucket_periods(resolve_period(from_, to, NOW, zone), interval, 366, zone)  # type: ignore[arg-type]


def test_a_date_is_local_midnight_and_a_datetime_keeps_its_offset():
    assert parse_instant("2025-03-30", "from", MADRID) == utc(2025, 3, 29, 23)
    assert parse_instant("2025-03-31", "from", MADRID) == utc(2025, 3, 30, 22)
    assert parse_instant("2025-03-09", "to", NEW_YORK) == utc(2025, 3, 9, 5)
    assert parse_instant("2025-03-10", "to", NEW_YORK) == utc(2025, 3, 10, 4)
    assert parse_instant("2025-03-30T12:00:00Z", "from", MADRID) == utc(2025, 3, 30, 12)
    assert parse_instant("2025-03-30", "from") == utc(2025, 3, 30)  # the default zone is UTC


def test_the_default_period_ends_with_the_local_today():
    # 23:30 UTC on March 10 is already March 11 in Madrid (00:30) and still March 10 in New York.
    assert resolve_period(None, None, NOW, MADRID) == Period(utc(2025, 2, 9, 23), utc(2025, 3, 11, 23))
    assert resolve_period(None, None, NOW, NEW_YORK).end == utc(2025, 3, 11, 4)


def test_unknown_zones_are_refused_by_name():
    assert time_zone("Europe/Madrid") == MADRID and time_zone("UTC") == ZoneInfo("UTC")
    for name in ("Mars/Olympus", "europe/madrid ", "", "+01:00", "localtime"):
        with pytest.raises(InvalidQuery) as refused:
            time_zone(name)
        assert refused.value.field == "tz"


def test_madrid_days_across_both_dst_changes_last_23_and_25_hours():
    assert spans(series("2025-03-29", "2025-04-01", "day", MADRID)) == [
        (utc(2025, 3, 28, 23), utc(2025, 3, 29, 23), 24),
        (utc(2025, 3, 29, 23), utc(2025, 3, 30, 22), 23),
        (utc(2025, 3, 30, 22), utc(2025, 3, 31, 22), 24),
    ]
    assert spans(series("2025-10-25", "2025-10-28", "day", MADRID)) == [
        (utc(2025, 10, 24, 22), utc(2025, 10, 25, 22), 24),
        (utc(2025, 10, 25, 22), utc(2025, 10, 26, 23), 25),
        (utc(2025, 10, 26, 23), utc(2025, 10, 27, 23), 24),
    ]


def test_madrid_weeks_start_on_monday_and_the_first_is_partial():
    # Wednesday March 26 to Wednesday April 9: Wed–Sun (5 days, one of 23 h), a whole week, Mon–Tue.
    assert spans(series("2025-03-26", "2025-04-09", "week", MADRID)) == [
        (utc(2025, 3, 25, 23), utc(2025, 3, 30, 22), 119),
        (utc(2025, 3, 30, 22), utc(2025, 4, 6, 22), 168),
        (utc(2025, 4, 6, 22), utc(2025, 4, 8, 22), 48),
    ]
    # The week of the October change is 169 hours long.
    assert spans(series("2025-10-20", "2025-11-03", "week", MADRID)) == [
        (utc(2025, 10, 19, 22), utc(2025, 10, 26, 23), 169),
        (utc(2025, 10, 26, 23), utc(2025, 11, 2, 23), 168),
    ]


def test_new_york_days_and_weeks_across_both_dst_changes():
    assert spans(series("2025-03-09", "2025-03-11", "day", NEW_YORK)) == [
        (utc(2025, 3, 9, 5), utc(2025, 3, 10, 4), 23),
        (utc(2025, 3, 10, 4), utc(2025, 3, 11, 4), 24),
    ]
    fall_back = series("2025-11-02", "2025-11-03", "day", NEW_YORK)
    assert spans(fall_back) == [(utc(2025, 11, 2, 4), utc(2025, 11, 3, 5), 25)]
    # Wednesday March 5 to Monday March 17: Wed–Sun, then one whole week.
    assert spans(series("2025-03-05", "2025-03-17", "week", NEW_YORK)) == [
        (utc(2025, 3, 5, 5), utc(2025, 3, 10, 4), 119),
        (utc(2025, 3, 10, 4), utc(2025, 3, 17, 4), 168),
    ]
    assert spans(series("2025-10-27", "2025-11-10", "week", NEW_YORK)) == [
        (utc(2025, 10, 27, 4), utc(2025, 11, 3, 5), 169),
        (utc(2025, 11, 3, 5), utc(2025, 11, 10, 5), 168),
    ]


def test_months_are_the_zones_calendar_months():
    # The case: from Madrid's March 1 (an offset, not a date), four months are four buckets.
    period = Period(parse_instant("2025-03-01T00:00:00+01:00", "from"), parse_instant("2025-07-01", "to", MADRID))
    assert spans(bucket_periods(period, "month", 366, MADRID)) == [
        (utc(2025, 2, 28, 23), utc(2025, 3, 31, 22), 743),
        (utc(2025, 3, 31, 22), utc(2025, 4, 30, 22), 720),
        (utc(2025, 4, 30, 22), utc(2025, 5, 31, 22), 744),
        (utc(2025, 5, 31, 22), utc(2025, 6, 30, 22), 720),
    ]
    # Partial first and last months; the November change is inside New York's November.
    assert spans(series("2025-10-15", "2025-12-10", "month", NEW_YORK)) == [
        (utc(2025, 10, 15, 4), utc(2025, 11, 1, 4), 408),
        (utc(2025, 11, 1, 4), utc(2025, 12, 1, 5), 721),
        (utc(2025, 12, 1, 5), utc(2025, 12, 10, 5), 216),
    ]


def test_a_from_inside_a_local_day_starts_a_partial_bucket():
    period = Period(utc(2025, 3, 30, 10), parse_instant("2025-04-01", "to", MADRID))
    assert spans(bucket_periods(period, "day", 366, MADRID)) == [
        (utc(2025, 3, 30, 10), utc(2025, 3, 30, 22), 12),
        (utc(2025, 3, 30, 22), utc(2025, 3, 31, 22), 24),
    ]


def test_buckets_always_tile_the_period():
    # Whatever the zone and interval: consecutive, from `from` to `to`, never empty.
    for zone in (MADRID, NEW_YORK, ZoneInfo("Asia/Kolkata"), ZoneInfo("Australia/Lord_Howe")):
        for interval in ("day", "week", "month"):
            period = Period(utc(2025, 1, 7, 13, 45), utc(2025, 12, 3, 2, 10))
            buckets = bucket_periods(period, interval, 366, zone)  # type: ignore[arg-type]
            assert buckets[0].start == period.start and buckets[-1].end == period.end
            assert all(a.end == b.start for a, b in zip(buckets, buckets[1:], strict=False))
            assert all(b.start < b.end for b in buckets)
            for b in buckets[1:]:  # every inner boundary is a local midnight
                assert b.start.astimezone(zone).time() == datetime.min.time(), (zone, interval, b)


def test_the_bucket_limit_counts_local_buckets():
    assert len(series("2024-01-01", "2025-01-01", "day", MADRID)) == 366
    with pytest.raises(InvalidQuery) as refused:
        series("2024-01-01", "2025-01-02", "day", MADRID)
    assert refused.value.field == "interval"
    # One partial day more than 366 whole ones is too many as well.
    with pytest.raises(InvalidQuery):
        bucket_periods(Period(utc(2023, 12, 31, 12), parse_instant("2025-01-01", "to", MADRID)), "day", 366, MADRID)


def test_embudo_timezone_must_name_a_zone():
    from pydantic import ValidationError

    from services.metrics.settings import MetricsSettings

    assert MetricsSettings(timezone="Europe/Madrid").timezone == "Europe/Madrid"
    with pytest.raises(ValidationError, match="unknown IANA time zone"):
        MetricsSettings(timezone="Europe/Atlantis")
