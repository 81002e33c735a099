"""The metrics rules without I/O: periods, buckets, KPI arithmetic, ETags."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.metrics.domain import (
    InvalidQuery,
    Period,
    RawAggregates,
    bucket_periods,
    cut_hours,
    elapsed_share,
    etag,
    etag_matches,
    goal_progress,
    kpis,
    parse_instant,
    resolve_period,
)
from shared.rules import LEAD_STAGE_RANK as STAGE_RANK


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_dates_are_utc_midnight_and_datetimes_need_an_offset():
    assert parse_instant("2025-03-01", "from") == utc(2025, 3, 1)
    assert parse_instant("2025-03-01T02:00:00+02:00", "from") == utc(2025, 3, 1)
    assert parse_instant("2025-03-01T10:30:00Z", "from") == utc(2025, 3, 1, 10, 30)
    with pytest.raises(InvalidQuery, match="offset"):
        parse_instant("2025-03-01T10:30:00", "from")
    for bad in ("2025-02-30", "yesterday", "", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(InvalidQuery) as error:
            parse_instant(bad, "to")
        assert error.value.field == "to"


def test_default_period_is_the_30_days_ending_with_today():
    now = utc(2025, 3, 10, 15, 45)
    assert resolve_period(None, None, now) == Period(utc(2025, 2, 9), utc(2025, 3, 11))
    assert resolve_period(None, "2025-03-01", now) == Period(utc(2025, 1, 30), utc(2025, 3, 1))
    assert resolve_period("2025-03-05", None, now) == Period(utc(2025, 3, 5), utc(2025, 3, 11))


def test_from_at_or_after_to_is_an_empty_period_with_no_buckets():
    empty = resolve_period("2025-03-01", "2025-03-01", utc(2025, 3, 10))
    assert empty == Period(utc(2025, 3, 1), utc(2025, 3, 1))
    assert resolve_period("2025-03-02", "2025-03-01", utc(2025, 3, 10)) == Period(utc(2025, 3, 2), utc(2025, 3, 2))
    assert bucket_periods(empty, "day", 366) == []


def test_buckets_are_calendar_intervals_with_partial_first_and_last_ones():
    # Day buckets are UTC days (the default zone): a `from` at noon starts a partial day.
    period = Period(utc(2025, 3, 1, 12), utc(2025, 3, 4))
    assert bucket_periods(period, "day", 366) == [
        Period(utc(2025, 3, 1, 12), utc(2025, 3, 2)),
        Period(utc(2025, 3, 2), utc(2025, 3, 3)),
        Period(utc(2025, 3, 3), utc(2025, 3, 4)),
    ]
    # Weeks are ISO weeks: March 1, 2025 is a Saturday, so the first bucket ends on Monday the 3rd.
    weeks = bucket_periods(Period(utc(2025, 3, 1), utc(2025, 4, 1)), "week", 366)
    assert [(b.start.day, b.end.day) for b in weeks] == [(1, 3), (3, 10), (10, 17), (17, 24), (24, 31), (31, 1)]


def test_month_buckets_are_calendar_months():
    months = bucket_periods(Period(utc(2025, 1, 31), utc(2025, 5, 10)), "month", 366)
    assert [(b.start.date().isoformat(), b.end.date().isoformat()) for b in months] == [
        ("2025-01-31", "2025-02-01"),
        ("2025-02-01", "2025-03-01"),
        ("2025-03-01", "2025-04-01"),
        ("2025-04-01", "2025-05-01"),
        ("2025-05-01", "2025-05-10"),
    ]


def test_too_many_buckets_is_refused():
    assert len(bucket_periods(Period(utc(2024, 1, 1), utc(2025, 1, 1)), "day", 366)) == 366
    with pytest.raises(InvalidQuery) as error:
        bucket_periods(Period(utc(2024, 1, 1), utc(2025, 1, 2)), "day", 366)
    assert error.value.field == "interval"


def test_cut_hours_are_the_utc_hours_a_boundary_falls_inside():
    day = Period(utc(2025, 3, 1), utc(2025, 3, 2))
    assert cut_hours([day]) == []
    odd = Period(utc(2025, 3, 1, 10, 17, 3), utc(2025, 3, 2, 9, 0, 0, 1))
    assert cut_hours([odd]) == [utc(2025, 3, 1, 10), utc(2025, 3, 2, 9)]
    assert cut_hours([Period(utc(2025, 3, 1, 10, 5), utc(2025, 3, 1, 10, 55))]) == [utc(2025, 3, 1, 10)]

    # Local days in India (+05:30): every boundary cuts an hour; in Madrid (+01:00) none does.
    def days(zone: str) -> list[Period]:
        start, end = (parse_instant(f"2025-03-0{d}", "from", ZoneInfo(zone)) for d in (1, 4))
        return bucket_periods(Period(start, end), "day", 366, ZoneInfo(zone))

    assert cut_hours(days("Asia/Kolkata")) == [utc(2025, 2, 28, 18), utc(2025, 3, 1, 18), utc(2025, 3, 2, 18),
                                         utc(2025, 3, 3, 18)]  # fmt: skip
    assert cut_hours(days("Europe/Madrid")) == []
    # An aligned boundary next to a cut one in the same hour: the hour is still cut.
    assert cut_hours(
        [Period(utc(2025, 3, 1, 9), utc(2025, 3, 1, 10)), Period(utc(2025, 3, 1, 10), utc(2025, 3, 1, 10, 30))]
    ) == [utc(2025, 3, 1, 10)]


def test_disqualified_reaches_nothing_further():
    assert STAGE_RANK["disqualified"] == STAGE_RANK["lead"] < STAGE_RANK["mql"] < STAGE_RANK["sql"]


def test_kpis_with_no_facts_are_zero_or_null():
    result = kpis(RawAggregates())
    assert (result["revenue"], result["spend"], result["leads_generated"]) == ("0.00", "0.00", 0)
    nullable = ["cac", "conversion_rate", "roi", "close_rate", "ltv", "win_rate", "ltv_to_cac"]
    assert [result[name] for name in nullable] == [None] * len(nullable)
    assert (result["page_views"], result["sessions"], result["visitors"]) == (0, 0, 0)
    assert set(result["conversion_rates"].values()) == {None}


def test_kpi_arithmetic_money_and_rounding():
    raw = RawAggregates(
        page_views=1200, sessions=400, visitors=300, visitors_who_became_leads=7,
        clicks=57, spend=Decimal("400.00"), leads=8, mql=6, sql=5, opportunity=5, customer=3,
        deals_won=3, deals_lost=2, won_revenue=Decimal("1600.00"), recorded_revenue=Decimal("200.01"),
        new_customers=3, new_customers_lifetime_revenue=Decimal("1850.00"),
        sales_cycle_average=8.166666, sales_cycle_median=10.5,
    )  # fmt: skip
    result = kpis(raw)
    assert result["revenue"] == "1800.01"
    assert result["cac"] == "133.33"  # 400 / 3
    assert result["ltv"] == "616.67"  # 1850 / 3, half up
    assert result["ltv_to_cac"] == 4.625  # from unrounded ltv and cac
    assert result["roi"] == 3.5  # (1800.01 - 400) / 400 = 3.500025
    # The headline is the domain's: visitors who became leads (7 of 300), not leads per click.
    assert result["conversion_rate"] == result["conversion_rates"]["visitor_to_lead"] == 0.0233
    assert result["conversion_rates"]["click_to_lead"] == 0.1404  # 8 / 57
    assert (result["page_views"], result["sessions"], result["visitors"]) == (1200, 400, 300)
    assert result["conversion_rates"]["mql_to_sql"] == 0.8333
    assert result["win_rate"] == 0.6 and result["close_rate"] == 0.375
    assert result["sales_cycle_days"] == {"average": 8.1667, "median": 10.5}


def test_spend_without_customers_and_customers_without_spend():
    no_customers = kpis(RawAggregates(spend=Decimal("100")))
    assert (no_customers["cac"], no_customers["ltv"], no_customers["roi"]) == (None, None, -1.0)
    free = kpis(RawAggregates(new_customers=2, new_customers_lifetime_revenue=Decimal("300")))
    assert (free["cac"], free["ltv"], free["roi"], free["ltv_to_cac"]) == ("0.00", "150.00", None, None)


def test_etags_follow_state_and_question():
    tag = etag("e1e2e3e4e5", 7, "/v1/kpis", "q")
    assert tag.startswith('W/"') and tag != etag("e1e2e3e4e5", 8, "/v1/kpis", "q")
    assert tag != etag("e1e2e3e4e5", 7, "/v1/kpis", "other")
    assert tag != etag("f1e2e3e4e5", 7, "/v1/kpis", "q")
    assert etag_matches(tag, tag) and etag_matches(tag.removeprefix("W/"), tag)
    assert etag_matches(f'"x", {tag}', tag) and etag_matches("*", tag)
    assert not etag_matches(None, tag) and not etag_matches('"x"', tag)


# A 30-day goal (April 2025): 10 days elapsed on April 11, 00:00 is a third of it.
APRIL = Period(utc(2025, 4, 1), utc(2025, 5, 1))


def test_goal_progress_mid_period_by_pace():
    assert elapsed_share(APRIL, utc(2025, 4, 11)) == Decimal(1) / 3
    # 30 MQLs targeted, 10 expected by now: 12 is on track, 8 at risk, 7 behind.
    assert goal_progress("mql", 12, Decimal(30), APRIL, utc(2025, 4, 11)) == {
        "actual": 12, "target": 30, "attainment": 0.4, "expected_to_date": 10.0, "pace": 1.2,
        "projected": 36.0, "status": "on_track",
    }  # fmt: skip
    at_risk = goal_progress("mql", 8, Decimal(30), APRIL, utc(2025, 4, 11))
    assert (at_risk["pace"], at_risk["projected"], at_risk["status"]) == (0.8, 24.0, "at_risk")
    behind = goal_progress("mql", 7, Decimal(30), APRIL, utc(2025, 4, 11))
    assert (behind["pace"], behind["status"]) == (0.7, "behind")
    # Unrounded: 10 of 100 after 11.5 days expects 38.3333..., a pace of 0.2609.
    odd = goal_progress("sql", 10, Decimal(100), APRIL, utc(2025, 4, 12, 12))
    assert (odd["expected_to_date"], odd["pace"], odd["projected"]) == (38.3333, 0.2609, 26.087)


def test_goal_progress_in_money_reached_missed_and_not_started():
    revenue = goal_progress("revenue", Decimal("2500.00"), Decimal("9000.00"), APRIL, utc(2025, 4, 16))
    assert revenue == {
        "actual": "2500.00", "target": "9000.00", "attainment": 0.2778, "expected_to_date": "4500.00",
        "pace": 0.5556, "projected": "5000.00", "status": "behind",
    }  # fmt: skip
    achieved = goal_progress("revenue", Decimal("9000.00"), Decimal("9000.00"), APRIL, utc(2025, 4, 2))
    assert achieved["status"] == "achieved" and achieved["attainment"] == 1.0
    # After the period: expected = target, projected = actual; short of the target is missed.
    over = goal_progress("deals_won", 9, Decimal(10), APRIL, utc(2025, 5, 3))
    assert over == {"actual": 9, "target": 10, "attainment": 0.9, "expected_to_date": 10.0, "pace": 0.9,
                    "projected": 9.0, "status": "missed"}  # fmt: skip
    assert goal_progress("deals_won", 11, Decimal(10), APRIL, utc(2025, 5, 3))["status"] == "achieved"
    # Before it: nothing expected yet, so no pace and no projection.
    early = goal_progress("pipeline_created", Decimal(0), Decimal("500.00"), APRIL, utc(2025, 3, 20))
    assert early == {"actual": "0.00", "target": "500.00", "attainment": 0.0, "expected_to_date": "0.00",
                     "pace": None, "projected": None, "status": "not_started"}  # fmt: skip
