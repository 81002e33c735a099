"""What Schemathesis should know that no JSON Schema keyword can say (each rule is also in
the operation's description): loaded by test_openapi_contract.py via SCHEMATHESIS_HOOKS.

These narrow what valid requests look like; they disable no check and accept no extra status.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import schemathesis
from hypothesis import strategies as st

from shared.rules import EARLIEST_OCCURRED_AT

# Client timestamps lie between 2000-01-01 (earlier ones come from unset clocks: ingest
# refuses them) and now (beyond the clock skew they would be "in the future"), in any offset.
_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_INSTANTS = st.datetimes(
    min_value=EARLIEST_OCCURRED_AT.replace(tzinfo=None), max_value=datetime.now(UTC).replace(tzinfo=None)
)
schemathesis.openapi.format(
    "date-time",
    st.tuples(_INSTANTS, _OFFSETS).map(lambda pair: pair[0].replace(tzinfo=UTC).astimezone(pair[1]).isoformat()),
)
schemathesis.openapi.format(
    "date", st.dates(min_value=EARLIEST_OCCURRED_AT.date(), max_value=date.today()).map(date.isoformat)
)


@schemathesis.hook
def filter_query(ctx, query):
    """Metrics periods: `from` earlier than `to`, and a timeseries of at most
    EMBUDO_MAX_TIMESERIES_BUCKETS buckets (both stated in the parameters' descriptions).
    Only cases whose `from`/`to` are well-formed are dropped for breaking these rules; a
    malformed value is kept, for the API to refuse."""
    if not query or not ({"from", "to"} & set(query)):
        return True
    from services.metrics.domain import InvalidQuery, bucket_periods, parse_instant, resolve_period, time_zone
    from services.metrics.settings import MetricsSettings

    try:
        zone = time_zone(query.get("tz", "UTC"))
        for name in ("from", "to"):
            if name in query:
                parse_instant(query[name], name, zone)
    except (InvalidQuery, TypeError, AttributeError):
        return True
    try:
        period = resolve_period(query.get("from"), query.get("to"), datetime.now(UTC), zone)
        if ctx.operation.path.endswith("/timeseries") and query.get("interval", "day") in ("day", "week", "month"):
            bucket_periods(period, query.get("interval", "day"), MetricsSettings().max_timeseries_buckets, zone)
    except InvalidQuery:
        return False
    return True


@schemathesis.hook
def filter_body(ctx, body):
    """A goal's period: `from` earlier than `to` (stated in the field's description). Only
    bodies whose `from` and `to` are both well-formed are dropped for breaking it."""
    if not ctx.operation.path.startswith("/v1/goals") or not isinstance(body, dict):
        return True
    from services.metrics.domain import InvalidQuery, parse_instant

    try:
        return parse_instant(body["from"], "from") < parse_instant(body["to"], "to")
    except (KeyError, InvalidQuery, TypeError, AttributeError):
        return True
