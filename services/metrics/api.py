"""The KPI API (bearer token) and the dashboard page (no token: it asks for one).

Every GET answers with an ETag made of the projection's version and the normalised query,
checked before any KPI is computed: a dashboard polling an unchanged state gets a 304 for
the price of one single-row SELECT.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from services.metrics import store
from services.metrics.domain import (
    AttributionModel,
    BreakdownBy,
    Filters,
    Interval,
    InvalidQuery,
    Period,
    RawAggregates,
    bucket_periods,
    etag,
    etag_matches,
    kpis,
    resolve_period,
)
from shared.app import DbPool
from shared.events import Text, utcnow
from shared.http import Problem, require_api_token
from shared.settings import DEV_API_TOKEN

STATIC = Path(__file__).parent / "static"

router = APIRouter(prefix="/v1", tags=["kpis"], dependencies=[Depends(require_api_token)])

From = Annotated[str | None, Query(alias="from", description="inclusive; RFC 3339 date or datetime")]
To = Annotated[str | None, Query(description="exclusive; RFC 3339 date or datetime")]


# Filters go to Postgres as text parameters: Text refuses the NUL Postgres would fail on.
CampaignId = Annotated[Text | None, Query(max_length=200)]
Channel = Annotated[Text | None, Query(max_length=200)]
Attribution = Annotated[AttributionModel, Query()]


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def invalid(error: InvalidQuery) -> Problem:
    return Problem(
        422, "The request has invalid fields.", title="Validation failed",
        errors=[{"field": error.field, "message": error.message, "type": "value_error"}],
    )  # fmt: skip


def period_of(from_: str | None, to: str | None) -> Period:
    try:
        return resolve_period(from_, to, utcnow())
    except InvalidQuery as error:
        raise invalid(error) from None


def header(period: Period, filters: Filters, attribution: str, currency: str) -> dict[str, Any]:
    return {
        "from": iso(period.start),
        "to": iso(period.end),
        "currency": currency,
        "filters": filters.as_dict(),
        "attribution": attribution,
    }


def kpi_object(period: Period, filters: Filters, attribution: str, currency: str, raw: RawAggregates,
               as_of: datetime | None) -> dict[str, Any]:  # fmt: skip
    return {**header(period, filters, attribution, currency), **kpis(raw), "as_of": iso(as_of)}


async def conditional_get(
    request: Request,
    pool: asyncpg.Pool,
    query_key: tuple[object, ...],
    compute: Callable[[asyncpg.Connection, store.ProjectionState], Awaitable[dict[str, Any]]],
) -> Response:
    """304 when the client's ETag is current; otherwise compute on one consistent snapshot."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        state = await store.projection_state(conn)
        tag = etag(state.epoch, state.version, request.url.path, *query_key)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
        if etag_matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        body = await compute(conn, state)
    return JSONResponse(body, headers=headers)


@router.get("/kpis")
async def get_kpis(
    request: Request, pool: DbPool, from_: From = None, to: To = None, campaign_id: CampaignId = None,
    channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """Every KPI for one period (docs/kpis.md has the definitions)."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)
    currency = request.app.state.settings.currency

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        groups = await store.kpi_aggregates(conn, [period], filters, attribution, currency)
        return kpi_object(period, filters, attribution, currency, groups.get((0, None), RawAggregates()), state.as_of)

    return await conditional_get(request, pool, (period, filters, attribution), compute)


@router.get("/kpis/timeseries")
async def get_timeseries(
    request: Request, pool: DbPool, from_: From = None, to: To = None, interval: Interval = "day",
    campaign_id: CampaignId = None, channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """One KPI object per bucket: `from` + n intervals, the last bucket ending at `to`."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)
    settings = request.app.state.settings
    try:
        buckets = bucket_periods(period, interval, settings.max_timeseries_buckets)
    except InvalidQuery as error:
        raise invalid(error) from None

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        groups = await store.kpi_aggregates(conn, buckets, filters, attribution, settings.currency)
        return {
            **header(period, filters, attribution, settings.currency),
            "interval": interval,
            "buckets": [
                kpi_object(
                    bucket, filters, attribution, settings.currency, groups.get((i, None), RawAggregates()), state.as_of
                )
                for i, bucket in enumerate(buckets)
            ],  # fmt: skip
            "as_of": iso(state.as_of),
        }

    return await conditional_get(request, pool, (period, interval, filters, attribution), compute)


@router.get("/kpis/breakdown")
async def get_breakdown(
    request: Request, pool: DbPool, by: Annotated[BreakdownBy, Query()], from_: From = None, to: To = None,
    campaign_id: CampaignId = None, channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """One row of KPIs per campaign or channel; leads without one (unattributed) under null."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)
    currency = request.app.state.settings.currency
    key = "campaign_id" if by == "campaign" else "channel"

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        groups = await store.kpi_aggregates(conn, [period], filters, attribution, currency, by=by)
        values = sorted((value for _, value in groups), key=lambda v: (v is None, v or ""))
        return {
            **header(period, filters, attribution, currency),
            "by": by,
            "rows": [{key: value, **kpis(groups[(0, value)])} for value in values],
            "as_of": iso(state.as_of),
        }

    return await conditional_get(request, pool, (period, by, filters, attribution), compute)


def _ranked(counts: dict[str, int], name: str) -> list[dict[str, Any]]:
    return [{name: value, "count": n} for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


@router.get("/feedback")
async def get_feedback(
    request: Request, pool: DbPool, from_: From = None, to: To = None, campaign_id: CampaignId = None,
    channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """What sales tells marketing: the lost reasons and objections of the deals lost in the
    period, in total and by campaign."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        reasons, objections, lost = await store.lost_feedback(conn, period, filters, attribution)
        total_reasons: dict[str, int] = defaultdict(int)
        total_objections: dict[str, int] = defaultdict(int)
        by_campaign: dict[str | None, dict[str, dict[str, int]]] = defaultdict(
            lambda: {"reasons": defaultdict(int), "objections": defaultdict(int)}
        )
        for item in reasons:
            total_reasons[item.value] += item.count
            by_campaign[item.campaign_id]["reasons"][item.value] += item.count
        for item in objections:
            total_objections[item.value] += item.count
            by_campaign[item.campaign_id]["objections"][item.value] += item.count
        campaigns = sorted(lost, key=lambda c: (-lost[c], c is None, c or ""))
        return {
            "from": iso(period.start),
            "to": iso(period.end),
            "filters": filters.as_dict(),
            "attribution": attribution,
            "deals_lost": sum(lost.values()),
            "lost_reasons": _ranked(total_reasons, "reason"),
            "objections": _ranked(total_objections, "objection"),
            "campaigns": [
                {
                    "campaign_id": campaign,
                    "deals_lost": lost[campaign],
                    "lost_reasons": _ranked(by_campaign[campaign]["reasons"], "reason"),
                    "objections": _ranked(by_campaign[campaign]["objections"], "objection"),
                }
                for campaign in campaigns
            ],
            "as_of": iso(state.as_of),
        }

    return await conditional_get(request, pool, (period, filters, attribution), compute)


# --- the dashboard --------------------------------------------------------------------


def install_dashboard(app: FastAPI) -> None:
    """GET / (the page, no token needed to load it) and /static (its scripts, chart.js included)."""
    settings = app.state.settings
    config = {
        # Only `make dev` (EMBUDO_ENV=dev, dev token accepted) pre-fills the token; elsewhere the page asks.
        "token": DEV_API_TOKEN if settings.env == "dev" and DEV_API_TOKEN in settings.api_token_list else "",
        "pollSeconds": settings.dashboard_poll_seconds,
    }
    page = (STATIC / "index.html").read_text().replace("{{CONFIG}}", json.dumps(config).replace("<", "\\u003c"))

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
