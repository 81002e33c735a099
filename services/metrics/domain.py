"""The KPI rules: periods and buckets, how stages rank, and how raw counts and sums become
the published KPIs (docs/kpis.md is the same text for people). No I/O here."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from shared.errors import InvalidField
from shared.events import is_rfc3339
from shared.settings import ServiceSettings

AttributionModel = Literal["first_touch", "last_touch"]
Interval = Literal["day", "week", "month"]
BreakdownBy = Literal["campaign", "channel"]

DEFAULT_PERIOD = timedelta(days=30)
# A visitor's page views this far apart or more are two sessions (store.py splits them).
SESSION_TIMEOUT = timedelta(minutes=30)
# The handoff SLA when none is given (EMBUDO_SLA_ACCEPT_HOURS's default).
DEFAULT_SLA = timedelta(hours=ServiceSettings.model_fields["sla_accept_hours"].default)


class InvalidQuery(InvalidField):
    """A query parameter that cannot be served; `field` names it."""


_DATE = re.compile(r"\d{4}-\d\d-\d\d")

# The IANA zones this machine's tz database holds (`localtime` and `posixrules` are aliases
# of the machine's own configuration, not names of a place).
TIME_ZONES: frozenset[str] = frozenset(available_timezones() - {"localtime", "posixrules"})


def time_zone(name: str, field: str = "tz") -> ZoneInfo:
    """An IANA time zone by name (`Europe/Madrid`); an unknown name is an invalid `field`."""
    if name not in TIME_ZONES:
        raise InvalidQuery(field, "unknown time zone: expected an IANA name such as Europe/Madrid or UTC")
    return ZoneInfo(name)


UTC_ZONE = ZoneInfo("UTC")


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`, in UTC. Where a DST gap swallows midnight, the
    day starts at the gap (fold=0 reads the missing time with the offset before it)."""
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def parse_instant(text: str, field: str, zone: ZoneInfo = UTC_ZONE) -> datetime:
    """RFC 3339: a date (= that day's midnight in `zone`) or a datetime with an offset, in UTC."""
    text = text.strip()
    try:
        if _DATE.fullmatch(text):
            return local_midnight(date.fromisoformat(text), zone)
        if not is_rfc3339(text):
            raise ValueError(text)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidQuery(field, "expected an RFC 3339 date (2025-01-31) or datetime with offset") from None
    except OverflowError:
        raise InvalidQuery(field, "out of range") from None
    if parsed.tzinfo is None:
        raise InvalidQuery(field, "a datetime needs an offset (Z or +hh:mm); naive times are ambiguous")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidQuery(field, "out of range") from None


@dataclass(frozen=True)
class Period:
    start: datetime  # inclusive
    end: datetime  # exclusive
    # Where the question was asked: answers show its offsets. Not part of equality (the same
    # instants are the same period), but of repr, and so of the ETag.
    zone: ZoneInfo = field(default=UTC_ZONE, compare=False)

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone)


def resolve_period(from_text: str | None, to_text: str | None, now: datetime, zone: ZoneInfo = UTC_ZONE) -> Period:
    """Defaults: `to` = the end of today (in `zone`), `from` = 30 days before `to`. Whole days
    keep the default stable all day long, so a polling dashboard gets 304s. A given but empty
    `from` or `to` is invalid, not the default."""
    end = parse_instant(to_text, "to", zone) if to_text is not None else _end_of_day(now, zone)
    try:
        start = parse_instant(from_text, "from", zone) if from_text is not None else end - DEFAULT_PERIOD
    except OverflowError:
        raise InvalidQuery("to", "out of range") from None
    # `from` at or after `to` is an empty period: it holds nothing, so every count is 0 (and a
    # timeseries has no bucket), like any filter that matches nothing.
    return Period(start, max(start, end), zone)


def _end_of_day(now: datetime, zone: ZoneInfo) -> datetime:
    return local_midnight(now.astimezone(zone).date() + timedelta(days=1), zone)


def _interval_start(day: date, interval: Interval) -> date:
    """The local day starting the day's, ISO week's (Monday) or calendar month's bucket."""
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def _next_interval(day: date, interval: Interval) -> date:
    if interval == "day":
        return day + timedelta(days=1)
    if interval == "week":
        return day + timedelta(weeks=1)
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def bucket_periods(period: Period, interval: Interval, max_buckets: int, zone: ZoneInfo = UTC_ZONE) -> list[Period]:
    """The period cut at every local midnight starting a day, an ISO week (Monday) or a
    calendar month in `zone`: a local day lasts 23 or 25 hours across a DST change, and the
    first and last buckets are partial when `from` / `to` fall inside an interval."""
    bounds = [period.start]
    if period.start < period.end:
        try:
            day = _interval_start(period.start.astimezone(zone).date(), interval)
            while (boundary := local_midnight(day, zone)) < period.end:
                if boundary > period.start:
                    if len(bounds) == max_buckets:
                        raise InvalidQuery(
                            "interval", f"more than {max_buckets} buckets: choose a longer interval or period"
                        )
                    bounds.append(boundary)
                day = _next_interval(day, interval)
        except (OverflowError, ValueError):  # past year 9999: the period's end closes it
            pass
        bounds.append(period.end)
    return [Period(start, end, zone) for start, end in itertools.pairwise(bounds)]


def cut_hours(buckets: list[Period]) -> list[datetime]:
    """The UTC hours that a bucket boundary falls inside rather than on. Campaign facts are
    summed per UTC hour (the `campaign_hourly` rollup): every other hour of the period lies
    whole in one bucket and is read from there; these are read fact by fact."""
    bounds = [bucket.start for bucket in buckets] + [buckets[-1].end]
    hours = (moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) for moment in bounds)
    return sorted({hour for hour, moment in zip(hours, bounds, strict=True) if hour != moment})


@dataclass(frozen=True)
class Filters:
    campaign_id: str | None = None
    channel: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"campaign_id": self.campaign_id, "channel": self.channel}


@dataclass
class RawAggregates:
    """What the store counts and sums for one group (a period, a bucket, a campaign...)."""

    page_views: int = 0
    sessions: int = 0
    visitors: int = 0
    visitors_who_became_leads: int = 0  # of `visitors`: leads created in the same period
    impressions: int = 0
    clicks: int = 0
    spend: Decimal = Decimal(0)
    leads: int = 0
    mql: int = 0
    sql: int = 0
    opportunity: int = 0
    customer: int = 0
    deals_won: int = 0
    deals_lost: int = 0
    won_revenue: Decimal = Decimal(0)
    recorded_revenue: Decimal = Decimal(0)
    new_customers: int = 0
    new_customers_lifetime_revenue: Decimal = Decimal(0)
    sales_cycle_average: float | None = None
    sales_cycle_median: float | None = None
    reached_mql: int = 0  # first arrivals at the stage in the period
    reached_sql: int = 0
    reached_opportunity: int = 0
    pipeline_created: Decimal = Decimal(0)
    handoffs: int = 0
    accepted: int = 0
    rejected: int = 0
    responded_within_sla: int = 0
    breached: int = 0
    pending: int = 0
    pending_overdue: int = 0
    response_hours_median: float | None = None
    open_deals: int = 0  # at the end of the period (or now)
    open_value: Decimal = Decimal(0)
    weighted_value: Decimal = Decimal(0)
    forecast_open: Decimal = Decimal(0)  # weighted value of open deals expected to close in the rest of it
    # The shares of the recorded costs (PUT /v1/costs) falling in the period; ad spend is `spend`.
    media_costs: Decimal = Decimal(0)  # category media, either team
    marketing_costs: Decimal = Decimal(0)  # team marketing
    sales_costs: Decimal = Decimal(0)  # team sales


FOUR_PLACES = Decimal("0.0001")
CENTS = Decimal("0.01")


def ratio(numerator: Decimal | int, denominator: Decimal | int) -> float | None:
    """numerator / denominator rounded to 4 places; null when the denominator is 0."""
    if not denominator:
        return None
    return float((Decimal(numerator) / Decimal(denominator)).quantize(FOUR_PLACES, ROUND_HALF_UP))


def money(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount.quantize(CENTS, ROUND_HALF_UP))


def rounded(value: float | Decimal | None) -> float | None:
    return None if value is None else float(Decimal(str(value)).quantize(FOUR_PLACES, ROUND_HALF_UP))


def kpis(raw: RawAggregates) -> dict[str, Any]:
    """The KPI fields of one group, in the order of the public contract."""
    revenue = raw.won_revenue + raw.recorded_revenue
    cac = raw.spend / raw.new_customers if raw.new_customers else None
    marketing_costs = raw.spend + raw.marketing_costs
    total_costs = marketing_costs + raw.sales_costs
    cac_full = total_costs / raw.new_customers if raw.new_customers else None
    ltv = raw.new_customers_lifetime_revenue / raw.new_customers if raw.new_customers else None
    visitor_to_lead = ratio(raw.visitors_who_became_leads, raw.visitors)
    return {
        "cac": money(cac),
        "cac_full": money(cac_full),
        "conversion_rate": visitor_to_lead,
        "roi": ratio(revenue - raw.spend, raw.spend),
        "roas": ratio(revenue, raw.spend),
        "leads_generated": raw.leads,
        "close_rate": ratio(raw.customer, raw.leads),
        "sales_cycle_days": {
            "average": rounded(raw.sales_cycle_average),
            "median": rounded(raw.sales_cycle_median),
        },
        "ltv": money(ltv),
        "revenue": money(revenue),
        "page_views": raw.page_views,
        "sessions": raw.sessions,
        "visitors": raw.visitors,
        "impressions": raw.impressions,
        "clicks": raw.clicks,
        "spend": money(raw.spend),
        "costs": {
            "media": money(raw.spend + raw.media_costs),
            "marketing": money(marketing_costs),
            "sales": money(raw.sales_costs),
            "total": money(total_costs),
        },
        "funnel": {
            "leads": raw.leads,
            "mql": raw.mql,
            "sql": raw.sql,
            "opportunity": raw.opportunity,
            "customer": raw.customer,
        },
        "conversion_rates": {
            "visitor_to_lead": visitor_to_lead,
            "click_to_lead": ratio(raw.leads, raw.clicks),
            "lead_to_mql": ratio(raw.mql, raw.leads),
            "mql_to_sql": ratio(raw.sql, raw.mql),
            "sql_to_opportunity": ratio(raw.opportunity, raw.sql),
            "opportunity_to_customer": ratio(raw.customer, raw.opportunity),
            "lead_to_customer": ratio(raw.customer, raw.leads),
        },
        "deals_won": raw.deals_won,
        "deals_lost": raw.deals_lost,
        "win_rate": ratio(raw.deals_won, raw.deals_won + raw.deals_lost),
        "new_customers": raw.new_customers,
        # ltv / cac = (lifetime revenue / n) / (spend / n): computed unrounded; null when
        # either is null or cac is 0 (no spend).
        "ltv_to_cac": ratio(raw.new_customers_lifetime_revenue, raw.spend) if raw.new_customers else None,
        "stage_reached": {
            "mql": raw.reached_mql,
            "sql": raw.reached_sql,
            "opportunity": raw.reached_opportunity,
            "customer": raw.new_customers,  # a customer's first arrival is its first win
        },
        "pipeline_created": money(raw.pipeline_created),
        "sla": {
            "handoffs": raw.handoffs,
            "accepted": raw.accepted,
            "rejected": raw.rejected,
            "responded_within_sla": raw.responded_within_sla,
            "breached": raw.breached,
            "pending": raw.pending,
            "pending_overdue": raw.pending_overdue,
            "within_sla_rate": ratio(raw.responded_within_sla, raw.handoffs),
            "median_hours_to_response": rounded(raw.response_hours_median),
        },
        "pipeline": {
            "open_deals": raw.open_deals,
            "open_value": money(raw.open_value),
            "weighted_value": money(raw.weighted_value),
        },
        "forecast": money(revenue + raw.forecast_open),
    }


def etag(epoch: str, version: int, *query_parts: object) -> str:
    """Weak ETag from the projection's state and the normalised query: it changes exactly
    when an event is applied or the question changes, and needs no KPI computation."""
    digest = hashlib.sha256(repr(query_parts).encode()).hexdigest()[:16]
    return f'W/"{epoch[:8]}-{version}-{digest}"'


def etag_matches(if_none_match: str | None, current: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # Weak comparison (RFC 9110 §13.1.2): W/ prefixes are ignored.
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return current.removeprefix("W/") in candidates


# --- full costs -------------------------------------------------------------------------

CostCategory = Literal["media", "salaries", "tools", "agency", "events", "other"]


@dataclass(frozen=True)
class Cost:
    """A cost spread evenly over the time of its period (PUT /v1/costs)."""

    category: str
    team: str
    amount: Decimal  # in cents' precision
    period: Period
    campaign_id: str | None = None
    channel: str | None = None


def _micros(span: timedelta) -> int:
    return span // timedelta(microseconds=1)


def cost_share(amount: Decimal, cost: Period, part: Period) -> Decimal:
    """The share of `amount` spread over `cost` that falls in `part`, pro rata by time, to the
    cent: the amount accrued by part's end minus that accrued by its start, each rounded half
    up to the cent. Rounding the running total (not each share) makes the shares of any split
    of the cost's period into consecutive parts add up to exactly `amount`."""
    cents, total = int(amount * 100), _micros(cost.end - cost.start)

    def accrued(moment: datetime) -> int:  # cents accrued by `moment`, rounded half up
        elapsed = min(total, max(0, _micros(moment - cost.start)))
        return (2 * cents * elapsed + total) // (2 * total)

    if part.end <= part.start:
        return Decimal(0).quantize(CENTS)
    return (Decimal(accrued(part.end) - accrued(part.start)) / 100).quantize(CENTS)


def allocate_costs(
    costs: Iterable[Cost], buckets: Sequence[Period], by: BreakdownBy | None = None
) -> dict[tuple[int, str | None], RawAggregates]:
    """Each cost's share of each bucket, summed per (bucket, the cost's campaign or channel
    for a breakdown) into the cost fields of RawAggregates."""
    groups: dict[tuple[int, str | None], RawAggregates] = {}
    for cost in costs:
        dim = cost.campaign_id if by == "campaign" else cost.channel if by == "channel" else None
        for i, bucket in enumerate(buckets):
            if bucket.end <= cost.period.start or bucket.start >= cost.period.end:
                continue
            share = cost_share(cost.amount, cost.period, bucket)
            raw = groups.setdefault((i, dim), RawAggregates())
            if cost.category == "media":
                raw.media_costs += share
            if cost.team == "marketing":
                raw.marketing_costs += share
            else:
                raw.sales_costs += share
    return groups


# --- shared goals -----------------------------------------------------------------------

Team = Literal["marketing", "sales"]
GoalMetric = Literal[
    "leads_generated", "mql", "sql", "opportunities", "new_customers", "deals_won", "revenue", "pipeline_created"
]
MONEY_METRICS: frozenset[str] = frozenset({"revenue", "pipeline_created"})
GoalStatus = Literal["achieved", "on_track", "at_risk", "behind", "missed", "not_started"]
# The least pace that is still `at_risk` rather than `behind` (1 and over: `on_track`).
AT_RISK_PACE = Decimal("0.8")

# Each goal metric is a KPI of /v1/kpis: the store statements that count it, and its value.
GOAL_QUERIES: dict[str, tuple[str, ...]] = {
    "leads_generated": ("cohort",),
    "mql": ("stage_reached",),
    "sql": ("stage_reached",),
    "opportunities": ("stage_reached",),
    "new_customers": ("new_customers",),
    "deals_won": ("won",),
    "revenue": ("won", "recorded"),
    "pipeline_created": ("created",),
}


def goal_actual(metric: str, raw: RawAggregates) -> Decimal | int:
    return {
        "leads_generated": lambda: raw.leads,
        "mql": lambda: raw.reached_mql,
        "sql": lambda: raw.reached_sql,
        "opportunities": lambda: raw.reached_opportunity,
        "new_customers": lambda: raw.new_customers,
        "deals_won": lambda: raw.deals_won,
        "revenue": lambda: raw.won_revenue + raw.recorded_revenue,
        "pipeline_created": lambda: raw.pipeline_created,
    }[metric]()


def elapsed_share(period: Period, now: datetime) -> Decimal:
    """How much of the period lies before now, from 0 (not started) to 1 (over)."""
    total = (period.end - period.start) // timedelta(microseconds=1)
    elapsed = (now - period.start) // timedelta(microseconds=1)
    return min(Decimal(1), max(Decimal(0), Decimal(elapsed) / Decimal(total)))


def goal_status(actual: Decimal, target: Decimal, pace: Decimal | None, period: Period, now: datetime) -> GoalStatus:
    if actual >= target:
        return "achieved"
    if now >= period.end:
        return "missed"
    if now < period.start:
        return "not_started"
    if pace is not None and pace >= 1:
        return "on_track"
    return "at_risk" if pace is not None and pace >= AT_RISK_PACE else "behind"


def goal_progress(metric: str, actual: Decimal | int, target: Decimal, period: Period, now: datetime) -> dict[str, Any]:
    """actual against target over the goal's period, as of `now`: what was expected by now
    (target × the elapsed share), the pace (actual / expected), where the pace leads
    (actual / elapsed share). Computed unrounded; money in 2 places, the rest in 4; null on /0."""
    actual, share = Decimal(actual), elapsed_share(period, now)
    expected = target * share
    pace = actual / expected if expected else None
    projected = actual / share if share else None

    is_money = metric in MONEY_METRICS

    def count(value: Decimal) -> str | int | None:  # an actual or a target: a count is whole
        return money(value) if is_money else int(value)

    def estimate(value: Decimal | None) -> str | float | None:  # a share of one
        return money(value) if is_money else rounded(value)

    return {
        "actual": count(actual),
        "target": count(target),
        "attainment": ratio(actual, target),
        "expected_to_date": estimate(expected),
        "pace": rounded(pace),
        "projected": estimate(projected),
        "status": goal_status(actual, target, pace, period, now),
    }
