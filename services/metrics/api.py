"""The KPI API (bearer token) and the dashboard page (no token: it asks for one).

Every GET answers with an ETag made of the projection's version and the normalised query,
checked before any KPI is computed: a dashboard polling an unchanged state gets a 304 for
the price of one single-row SELECT.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from shared.app import DbPool
from shared.auth import require_api_token
from shared.errors import InvalidField
from shared.events import NonBlankText, Text, money_input, utcnow
from shared.openapi import problems
from shared.pagination import Page, cursor_param, decode_cursor
from shared.settings import DEV_API_TOKEN

from . import service, store
from .domain import (
    MONEY_METRICS,
    TIME_ZONES,
    AttributionModel,
    BreakdownBy,
    Filters,
    GoalMetric,
    GoalStatus,
    Interval,
    Period,
    Team,
    bucket_periods,
    etag,
    etag_matches,
    parse_instant,
    resolve_period,
    time_zone,
)
from .settings import MetricsSettings, Settings

STATIC = Path(__file__).parent / "static"

router = APIRouter(
    prefix="/v1", tags=["kpis"], dependencies=[Depends(require_api_token)], responses=problems(401, 403, 422)
)

# A date (that day's UTC midnight) or a date-time with an offset; `from` earlier than `to`.
_INSTANT = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}
From = Annotated[
    str | None,
    Query(
        alias="from",
        description="inclusive; RFC 3339 date or date-time, earlier than `to` (default: 30 days before `to`)",
        json_schema_extra=_INSTANT,
    ),
]
To = Annotated[
    str | None,
    Query(
        description="exclusive; RFC 3339 date or date-time (default: the end of today in `tz`)",
        json_schema_extra=_INSTANT,
    ),
]
Tz = Annotated[
    str | None,
    Query(
        max_length=64,
        description="IANA time zone (default EMBUDO_TIMEZONE, UTC unless set): a date means local midnight there, "
        "buckets are its local days, ISO weeks (Monday) and calendar months, and answers carry its offsets",
        examples=["Europe/Madrid"],
        json_schema_extra={"enum": sorted(TIME_ZONES)},  # the zones of the tz database the service runs with
    ),
]


# Filters go to Postgres as text parameters: Text refuses the NUL Postgres would fail on.
CampaignId = Annotated[Text | None, Query(max_length=200)]
Channel = Annotated[Text | None, Query(max_length=200)]
Attribution = Annotated[AttributionModel, Query()]


# --- what the answers look like (docs/kpis.md has the definitions) -------------------------

Money = Annotated[str, Field(pattern=r"^-?[0-9]+\.[0-9]{2}$", description="decimal string, 2 places")]
Count = Annotated[int, Field(ge=0)]
Ratio = Annotated[float | None, Field(description="rounded to 4 places; null when its denominator is 0")]


class FiltersOut(BaseModel):
    campaign_id: str | None
    channel: str | None


class SalesCycleDays(BaseModel):
    average: float | None
    median: float | None


class Funnel(BaseModel):
    leads: Count
    mql: Count
    sql: Count
    opportunity: Count
    customer: Count


class ConversionRates(BaseModel):
    visitor_to_lead: Ratio
    click_to_lead: Ratio
    lead_to_mql: Ratio
    mql_to_sql: Ratio
    sql_to_opportunity: Ratio
    opportunity_to_customer: Ratio
    lead_to_customer: Ratio


class StageReached(BaseModel):
    mql: Count
    sql: Count
    opportunity: Count
    customer: Count


class Sla(BaseModel):
    handoffs: Count = Field(description="deals created in the period from a lead reaching SQL")
    accepted: Count
    rejected: Count
    responded_within_sla: Count
    breached: Count = Field(description="answered late, or still pending past the SLA as of now")
    pending: Count
    pending_overdue: Count
    within_sla_rate: Ratio = Field(description="responded_within_sla / handoffs")
    median_hours_to_response: float | None = Field(description="over the answered handoffs; 4 places")


class Pipeline(BaseModel):
    open_deals: Count = Field(description="at the end of the period, or now for a period that has not ended")
    open_value: Money
    weighted_value: Money = Field(description="Σ amount × the stage's probability")


class Kpis(BaseModel):
    cac: Money | None
    conversion_rate: Ratio = Field(description="the headline: visitor → lead (= conversion_rates.visitor_to_lead)")
    roi: Ratio
    leads_generated: Count
    close_rate: Ratio
    sales_cycle_days: SalesCycleDays
    ltv: Money | None
    revenue: Money
    page_views: Count = Field(description="by their own time, filtered by their session's campaign/channel")
    sessions: Count = Field(description="started in the period")
    visitors: Count = Field(description="distinct persons with a session in the period (a lead once)")
    impressions: Count
    clicks: Count
    spend: Money
    funnel: Funnel
    conversion_rates: ConversionRates
    deals_won: Count
    deals_lost: Count
    win_rate: Ratio
    new_customers: Count
    ltv_to_cac: Ratio
    stage_reached: StageReached = Field(description="leads whose first arrival at the stage is in the period")
    pipeline_created: Money = Field(description="amounts of the deals created in the period (not rejected)")
    sla: Sla
    pipeline: Pipeline
    forecast: Money = Field(description="revenue so far + weighted value of open deals expected in the rest")


class Question(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    currency: str
    filters: FiltersOut
    attribution: AttributionModel


class KpiReport(Kpis, Question):
    as_of: datetime | None = Field(description="the time of the newest event applied")


class Timeseries(Question):
    interval: Interval
    buckets: list[KpiReport]
    as_of: datetime | None


class BreakdownRow(Kpis):
    campaign_id: str | None = Field(default=None, description="by=campaign: the row's campaign (null: unattributed)")
    channel: str | None = Field(default=None, description="by=channel: the row's channel (null: unattributed)")


class Breakdown(Question):
    by: BreakdownBy
    rows: list[BreakdownRow]
    as_of: datetime | None


class ReasonCount(BaseModel):
    reason: str
    count: Count


class ObjectionCount(BaseModel):
    objection: str
    count: Count


class TextCount(BaseModel):
    text: str
    count: Count = Field(description="deals that raised it in these words")


class KeyedObjection(BaseModel):
    key: str = Field(description="the objection vocabulary's key (`other`: none matched)")
    count: Count = Field(description="deals that raised it")
    texts: list[TextCount]


class ObjectionsByOutcome(BaseModel):
    lost: list[KeyedObjection] = Field(description="of the deals lost in the period")
    won: list[KeyedObjection] = Field(description="of the deals won in the period")
    open: list[KeyedObjection] = Field(description="of the deals open at its end (or now)")


class CampaignFeedback(BaseModel):
    campaign_id: str | None
    deals_lost: Count
    lost_reasons: list[ReasonCount]
    objections: list[ObjectionCount]
    deals_rejected: Count
    rejection_reasons: list[ReasonCount]
    disqualifications: Count
    disqualification_reasons: list[ReasonCount]


class Feedback(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    filters: FiltersOut
    attribution: AttributionModel
    deals_lost: Count
    lost_reasons: list[ReasonCount]
    objections: list[ObjectionCount] = Field(description="as recorded, of the deals lost in the period")
    deals_rejected: Count = Field(description="handoffs rejected in the period")
    rejection_reasons: list[ReasonCount]
    disqualifications: Count = Field(description="moves of a lead to disqualified, with a reason, in the period")
    disqualification_reasons: list[ReasonCount]
    objections_by_outcome: ObjectionsByOutcome
    campaigns: list[CampaignFeedback]
    as_of: datetime | None


def answers(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 with its body, and the 304 a matching If-None-Match gets."""
    etag = {"ETag": {"description": "weak; send it back in If-None-Match", "schema": {"type": "string"}}}
    return {
        200: {"model": model, "headers": etag},
        304: {"description": "Not modified: the ETag in If-None-Match is current", "headers": etag},
    }


async def current_time() -> datetime:
    """Now, to the minute: the now-dependent numbers of an answer (pending and overdue
    handoffs, the open pipeline, goal progress) are computed for it, so one ETag names one
    body for a whole minute. Tests override this dependency to fix the clock."""
    return utcnow().replace(second=0, microsecond=0)


Now = Annotated[datetime, Depends(current_time)]


def clock_of(now: datetime, settings: MetricsSettings) -> service.Clock:
    return service.Clock(now, settings.sla_accept)


def time_key(clock: service.Clock, end: datetime) -> datetime | None:
    """The part of an ETag the clock contributes: now, until a period's numbers no longer
    depend on it (ended, and every handoff in it past its SLA)."""
    return clock.now if clock.now < end + clock.sla else None


def period_of(from_: str | None, to: str | None, tz: str | None, now: datetime, settings: MetricsSettings) -> Period:
    return resolve_period(from_, to, now, time_zone(tz if tz is not None else settings.timezone))


async def conditional_get(
    request: Request,
    pool: asyncpg.Pool,
    query_key: tuple[object, ...],
    compute: Callable[[asyncpg.Connection, store.ProjectionState], Awaitable[dict[str, Any]]],
    *,
    goals: bool = False,
) -> Response:
    """304 when the client's ETag is current; otherwise compute on one consistent snapshot.
    `goals`: the answer also depends on the goals (their version is part of the tag)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        state = await store.projection_state(conn)
        if goals:
            query_key = (*query_key, await store.goals_version(conn))
        tag = etag(state.epoch, state.version, request.url.path, *query_key)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
        if etag_matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        body = await compute(conn, state)
    return JSONResponse(body, headers=headers)


@router.get("/kpis", responses=answers(KpiReport))
async def get_kpis(
    request: Request, pool: DbPool, settings: Settings, now: Now, from_: From = None, to: To = None, tz: Tz = None,
    campaign_id: CampaignId = None, channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """Every KPI for one period (docs/kpis.md has the definitions)."""
    period, filters = period_of(from_, to, tz, now, settings), Filters(campaign_id, channel)
    clock = clock_of(now, settings)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.kpi_report(conn, state, period, filters, attribution, settings.currency, clock)

    return await conditional_get(request, pool, (period, filters, attribution, time_key(clock, period.end)), compute)


@router.get("/kpis/timeseries", responses=answers(Timeseries))
async def get_timeseries(
    request: Request, pool: DbPool, settings: Settings, now: Now, from_: From = None, to: To = None, tz: Tz = None,
    interval: Interval = "day", campaign_id: CampaignId = None, channel: Channel = None,
    attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """One KPI object per bucket: `from` + n intervals, the last bucket ending at `to`."""
    period, filters = period_of(from_, to, tz, now, settings), Filters(campaign_id, channel)
    clock = clock_of(now, settings)
    buckets = bucket_periods(period, interval, settings.max_timeseries_buckets, period.zone)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.timeseries_report(
            conn, state, period, buckets, interval, filters, attribution, settings.currency, clock
        )

    key = (period, interval, filters, attribution, time_key(clock, period.end))
    return await conditional_get(request, pool, key, compute)


@router.get("/kpis/breakdown", responses=answers(Breakdown))
async def get_breakdown(
    request: Request, pool: DbPool, settings: Settings, now: Now, by: Annotated[BreakdownBy, Query()],
    from_: From = None, to: To = None, tz: Tz = None, campaign_id: CampaignId = None, channel: Channel = None,
    attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """One row of KPIs per campaign or channel; leads without one (unattributed) under null."""
    period, filters = period_of(from_, to, tz, now, settings), Filters(campaign_id, channel)
    clock = clock_of(now, settings)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.breakdown_report(conn, state, period, by, filters, attribution, settings.currency, clock)

    key = (period, by, filters, attribution, time_key(clock, period.end))
    return await conditional_get(request, pool, key, compute)


@router.get("/feedback", responses=answers(Feedback))
async def get_feedback(
    request: Request, pool: DbPool, settings: Settings, now: Now, from_: From = None, to: To = None, tz: Tz = None,
    campaign_id: CampaignId = None, channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """What sales tells marketing: the lost reasons and objections of the deals lost in the
    period, the reasons of the handoffs rejected and of the leads disqualified in it, in total
    and by campaign; the objections of the deals lost, won and open, by vocabulary key."""
    period, filters = period_of(from_, to, tz, now, settings), Filters(campaign_id, channel)
    clock = clock_of(now, settings)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.feedback_report(conn, state, period, filters, attribution, clock)

    key = (period, filters, attribution, clock.now if clock.now < period.end else None)
    return await conditional_get(request, pool, key, compute)


# --- shared goals -----------------------------------------------------------------------

# A count target is a whole number ≥ 1; a money target (revenue, pipeline_created) an amount
# in EMBUDO_CURRENCY, a decimal string ("12000.00") or number with at most two decimals.
MAX_COUNT_TARGET = 10**12
MoneyTarget = money_input(positive=True, integer_digits=16)
_MONEY_TARGET = TypeAdapter(MoneyTarget)
_COUNT_TARGET_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_COUNT_TARGET}
_MONEY_TARGET_SCHEMA = _MONEY_TARGET.json_schema()
TARGET_RULES = {
    "if": {"properties": {"metric": {"enum": sorted(MONEY_METRICS)}}, "required": ["metric"]},
    "then": {"properties": {"target": _MONEY_TARGET_SCHEMA}},
    "else": {"properties": {"target": _COUNT_TARGET_SCHEMA}},
}


def instant(field: str) -> Any:
    """A goal's `from` / `to`: an RFC 3339 date (UTC midnight) or date-time with an offset."""

    def parse(value: object) -> datetime:
        if not isinstance(value, str):
            raise PydanticCustomError("datetime_type", "expected an RFC 3339 date or date-time string")
        try:
            return parse_instant(value, field)
        except InvalidField as refused:
            raise PydanticCustomError("datetime_format", "{message}", {"message": refused.message}) from None

    return Annotated[datetime, BeforeValidator(parse), WithJsonSchema(_INSTANT)]


class GoalIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"allOf": [TARGET_RULES]})
    name: NonBlankText = Field(max_length=200)
    team: Team
    metric: GoalMetric = Field(description="a KPI of /v1/kpis (mql, sql, opportunities: its stage_reached)")
    target: Annotated[object, WithJsonSchema({"anyOf": [_COUNT_TARGET_SCHEMA, _MONEY_TARGET_SCHEMA]})] = Field(
        description="a whole number; for revenue and pipeline_created an amount in EMBUDO_CURRENCY"
    )
    from_: instant("from") = Field(alias="from", description="inclusive; earlier than `to`")  # type: ignore[valid-type]
    to: instant("to") = Field(description="exclusive")  # type: ignore[valid-type]
    campaign_id: NonBlankText | None = Field(default=None, max_length=200)
    channel: NonBlankText | None = Field(default=None, max_length=200)

    @field_validator("target", mode="before")
    @classmethod
    def _target_of_its_metric(cls, value: object, info: ValidationInfo) -> Decimal:
        if info.data.get("metric") in MONEY_METRICS:
            return _MONEY_TARGET.validate_python(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise PydanticCustomError("int_type", "expected a whole number (an amount only for revenue goals)")
        if not 1 <= value <= MAX_COUNT_TARGET:
            raise PydanticCustomError("int_range", f"expected a whole number from 1 to {MAX_COUNT_TARGET}")
        return Decimal(int(value))

    @field_validator("to")
    @classmethod
    def _after_from(cls, value: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("from_")
        if start is not None and value <= start:
            raise PydanticCustomError("period_order", "`to` must be later than `from`")
        return value

    def spec(self) -> store.GoalSpec:
        return store.GoalSpec(self.name, self.team, self.metric, self.target, self.from_, self.to, self.campaign_id,
                              self.channel)  # type: ignore[arg-type]  # fmt: skip


Estimate = Annotated[float | Money | None, Field(description="money goals: an amount; else 4 places; null on /0")]


class GoalProgress(BaseModel):
    actual: Count | Money
    target: Count | Money
    attainment: Ratio = Field(description="actual / target")
    expected_to_date: Estimate = Field(description="target × the elapsed share of the period (0 to 1)")
    pace: Ratio = Field(description="actual / expected_to_date")
    projected: Estimate = Field(description="actual / the elapsed share")
    status: GoalStatus = Field(
        description="achieved (actual ≥ target); else while the period runs on_track (pace ≥ 1), at_risk "
        "(pace ≥ 0.8) or behind; before it not_started; after it missed"
    )


class Goal(BaseModel):
    goal_id: uuid.UUID
    name: str
    team: Team
    metric: GoalMetric
    target: Count | Money
    from_: datetime = Field(alias="from")
    to: datetime
    campaign_id: str | None
    channel: str | None
    currency: str = Field(description="of money targets and actuals (EMBUDO_CURRENCY)")
    created_at: datetime
    updated_at: datetime
    progress: GoalProgress


class GoalPage(Page[Goal]):
    pass


GoalCursor = cursor_param(datetime, uuid.UUID)


@router.put("/goals/{goal_id}", tags=["goals"], responses={**problems(400, 413),
            200: {"model": Goal, "description": "Replaced (or already so)"},
            201: {"model": Goal, "description": "Created"}})  # fmt: skip
async def put_goal(goal_id: uuid.UUID, body: GoalIn, pool: DbPool, settings: Settings, now: Now) -> JSONResponse:
    """Create or replace a shared goal (idempotent: the same body again changes nothing)."""
    goal, created = await service.put_goal(pool, goal_id, body.spec(), settings.currency, clock_of(now, settings))
    return JSONResponse(goal, status_code=201 if created else 200)


@router.get("/goals", tags=["goals"], responses=answers(GoalPage))
async def list_goals(
    request: Request, pool: DbPool, settings: Settings, now: Now,
    active_at: Annotated[str | None, Query(description="RFC 3339 date or date-time: goals whose period holds it",
                                           json_schema_extra=_INSTANT)] = None,
    team: Team | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: GoalCursor = None,
) -> Response:  # fmt: skip
    """The goals (oldest first), each with its progress as of now."""
    moment = parse_instant(active_at, "active_at") if active_at is not None else None
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    clock = clock_of(now, settings)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.goals_page(conn, moment, team, after, limit, settings.currency, clock)

    return await conditional_get(request, pool, (moment, team, after, limit, clock.now), compute, goals=True)


@router.get("/goals/{goal_id}", tags=["goals"], responses={**answers(Goal), **problems(404)})
async def get_goal(request: Request, goal_id: uuid.UUID, pool: DbPool, settings: Settings, now: Now) -> Response:
    """One goal with its progress as of now."""
    clock = clock_of(now, settings)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.goal_report(conn, goal_id, settings.currency, clock)

    return await conditional_get(request, pool, (goal_id, clock.now), compute, goals=True)


@router.delete("/goals/{goal_id}", tags=["goals"], status_code=204, responses=problems(404))
async def delete_goal(goal_id: uuid.UUID, pool: DbPool) -> Response:
    await service.delete_goal(pool, goal_id)
    return Response(status_code=204)


# --- the handoffs past their SLA -------------------------------------------------------


class OverdueHandoff(BaseModel):
    deal_id: uuid.UUID
    lead_id: uuid.UUID
    campaign_id: str | None = Field(description="of the lead's chosen touch (null: unattributed)")
    channel: str | None
    created_at: datetime = Field(description="when the handoff was made")
    hours_waiting: float = Field(description="now - created_at, in hours (4 places)")


class OverduePage(Page[OverdueHandoff]):
    sla_accept_hours: float = Field(description="EMBUDO_SLA_ACCEPT_HOURS")
    now: datetime = Field(description="what the waiting is measured to (the request's minute)")
    filters: FiltersOut
    attribution: AttributionModel


OverdueCursor = cursor_param(datetime, uuid.UUID)


@router.get("/sla/overdue", responses=answers(OverduePage))
async def list_overdue_handoffs(
    request: Request, pool: DbPool, settings: Settings, now: Now, campaign_id: CampaignId = None,
    channel: Channel = None, attribution: Attribution = "first_touch",
    limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: OverdueCursor = None,
) -> Response:  # fmt: skip
    """The handoffs still waiting for sales' answer past the SLA, oldest first: a sales
    manager's work queue (docs/kpis.md)."""
    filters, clock = Filters(campaign_id, channel), clock_of(now, settings)
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.overdue_page(conn, filters, attribution, after, limit, clock)

    return await conditional_get(request, pool, (filters, attribution, after, limit, clock.now), compute)


# --- the dashboard --------------------------------------------------------------------


def install_dashboard(app: FastAPI, settings: MetricsSettings) -> None:
    """GET / (the page, no token needed to load it) and /static (its scripts, chart.js included)."""
    dev_token = settings.env == "dev" and any(t.secret == DEV_API_TOKEN for t in settings.tokens)
    config = {
        # Only `make dev` (EMBUDO_ENV=dev, dev token accepted) pre-fills the token; elsewhere the page asks.
        "token": DEV_API_TOKEN if dev_token else "",
        "pollSeconds": settings.dashboard_poll_seconds,
    }
    page = (STATIC / "index.html").read_text().replace("{{CONFIG}}", json.dumps(config).replace("<", "\\u003c"))

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
