"""The KPI API (bearer token) and the dashboard page (no token: it asks for one).

Every GET answers with an ETag made of the projection's version and the normalised query,
checked before any KPI is computed: a dashboard polling an unchanged state gets a 304 for
the price of one single-row SELECT.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from shared.app import DbPool
from shared.events import Text, utcnow
from shared.http import require_api_token
from shared.openapi import problems
from shared.settings import DEV_API_TOKEN

from . import service, store
from .domain import (
    AttributionModel,
    BreakdownBy,
    Filters,
    Interval,
    Period,
    bucket_periods,
    etag,
    etag_matches,
    resolve_period,
)
from .settings import MetricsSettings, Settings

STATIC = Path(__file__).parent / "static"

router = APIRouter(prefix="/v1", tags=["kpis"], dependencies=[Depends(require_api_token)], responses=problems(401, 422))

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
        description="exclusive; RFC 3339 date or date-time (default: the end of today, UTC)", json_schema_extra=_INSTANT
    ),
]


# Filters go to Postgres as text parameters: Text refuses the NUL Postgres would fail on.
CampaignId = Annotated[Text | None, Query(max_length=200)]
Channel = Annotated[Text | None, Query(max_length=200)]
Attribution = Annotated[AttributionModel, Query()]


def period_of(from_: str | None, to: str | None) -> Period:
    return resolve_period(from_, to, utcnow())


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
    request: Request, pool: DbPool, settings: Settings, from_: From = None, to: To = None,
    campaign_id: CampaignId = None, channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """Every KPI for one period (docs/kpis.md has the definitions)."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.kpi_report(conn, state, period, filters, attribution, settings.currency)

    return await conditional_get(request, pool, (period, filters, attribution), compute)


@router.get("/kpis/timeseries")
async def get_timeseries(
    request: Request, pool: DbPool, settings: Settings, from_: From = None, to: To = None,
    interval: Interval = "day", campaign_id: CampaignId = None, channel: Channel = None,
    attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """One KPI object per bucket: `from` + n intervals, the last bucket ending at `to`."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)
    buckets = bucket_periods(period, interval, settings.max_timeseries_buckets)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.timeseries_report(
            conn, state, period, buckets, interval, filters, attribution, settings.currency
        )

    return await conditional_get(request, pool, (period, interval, filters, attribution), compute)


@router.get("/kpis/breakdown")
async def get_breakdown(
    request: Request, pool: DbPool, settings: Settings, by: Annotated[BreakdownBy, Query()], from_: From = None,
    to: To = None, campaign_id: CampaignId = None, channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """One row of KPIs per campaign or channel; leads without one (unattributed) under null."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.breakdown_report(conn, state, period, by, filters, attribution, settings.currency)

    return await conditional_get(request, pool, (period, by, filters, attribution), compute)


@router.get("/feedback")
async def get_feedback(
    request: Request, pool: DbPool, from_: From = None, to: To = None, campaign_id: CampaignId = None,
    channel: Channel = None, attribution: Attribution = "first_touch",
) -> Response:  # fmt: skip
    """What sales tells marketing: the lost reasons and objections of the deals lost in the
    period, in total and by campaign."""
    period, filters = period_of(from_, to), Filters(campaign_id, channel)

    async def compute(conn: asyncpg.Connection, state: store.ProjectionState) -> dict[str, Any]:
        return await service.feedback_report(conn, state, period, filters, attribution)

    return await conditional_get(request, pool, (period, filters, attribution), compute)


# --- the dashboard --------------------------------------------------------------------


def install_dashboard(app: FastAPI, settings: MetricsSettings) -> None:
    """GET / (the page, no token needed to load it) and /static (its scripts, chart.js included)."""
    config = {
        # Only `make dev` (EMBUDO_ENV=dev, dev token accepted) pre-fills the token; elsewhere the page asks.
        "token": DEV_API_TOKEN if settings.env == "dev" and DEV_API_TOKEN in settings.api_tokens else "",
        "pollSeconds": settings.dashboard_poll_seconds,
    }
    page = (STATIC / "index.html").read_text().replace("{{CONFIG}}", json.dumps(config).replace("<", "\\u003c"))

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
