"""The metrics use cases. Reports are computed on one consistent snapshot of the projection
(the caller's read-only, repeatable-read transaction); the projection itself is written by
the event handlers (services/metrics/handlers.py). Shared goals are the one state metrics
owns and changes through its API."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.errors import NotFound
from shared.pagination import page_of
from shared.uow import unit_of_work

from . import store
from .domain import (
    GOAL_QUERIES,
    AttributionModel,
    BreakdownBy,
    Filters,
    Interval,
    Period,
    RawAggregates,
    goal_actual,
    goal_progress,
    kpis,
    rounded,
)


@dataclass(frozen=True)
class Clock:
    """What a report's now-dependent numbers are computed against: pending and overdue
    handoffs, the open pipeline, the rest of a period, a goal's elapsed share."""

    now: datetime
    sla: timedelta


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def header(period: Period, filters: Filters, attribution: str, currency: str) -> dict[str, Any]:
    return {
        "from": iso(period.local(period.start)),
        "to": iso(period.local(period.end)),
        "currency": currency,
        "filters": filters.as_dict(),
        "attribution": attribution,
    }


def kpi_object(period: Period, filters: Filters, attribution: str, currency: str, raw: RawAggregates,
               as_of: datetime | None) -> dict[str, Any]:  # fmt: skip
    return {**header(period, filters, attribution, currency), **kpis(raw), "as_of": iso(as_of)}


async def kpi_report(
    conn: asyncpg.Connection, state: store.ProjectionState, period: Period, filters: Filters,
    attribution: AttributionModel, currency: str, clock: Clock,
) -> dict[str, Any]:  # fmt: skip
    groups = await store.kpi_aggregates(conn, [period], filters, attribution, currency, now=clock.now, sla=clock.sla)
    return kpi_object(period, filters, attribution, currency, groups.get((0, None), RawAggregates()), state.as_of)


async def timeseries_report(
    conn: asyncpg.Connection, state: store.ProjectionState, period: Period, buckets: list[Period],
    interval: Interval, filters: Filters, attribution: AttributionModel, currency: str, clock: Clock,
) -> dict[str, Any]:  # fmt: skip
    groups = (
        await store.kpi_aggregates(conn, buckets, filters, attribution, currency, now=clock.now, sla=clock.sla)
        if buckets
        else {}
    )
    return {
        **header(period, filters, attribution, currency),
        "interval": interval,
        "buckets": [
            kpi_object(bucket, filters, attribution, currency, groups.get((i, None), RawAggregates()), state.as_of)
            for i, bucket in enumerate(buckets)
        ],
        "as_of": iso(state.as_of),
    }


async def breakdown_report(
    conn: asyncpg.Connection, state: store.ProjectionState, period: Period, by: BreakdownBy, filters: Filters,
    attribution: AttributionModel, currency: str, clock: Clock,
) -> dict[str, Any]:  # fmt: skip
    key = "campaign_id" if by == "campaign" else "channel"
    groups = await store.kpi_aggregates(
        conn, [period], filters, attribution, currency, by=by, now=clock.now, sla=clock.sla
    )
    values = sorted((value for _, value in groups), key=lambda v: (v is None, v or ""))
    return {
        **header(period, filters, attribution, currency),
        "by": by,
        "rows": [{key: value, **kpis(groups[(0, value)])} for value in values],
        "as_of": iso(state.as_of),
    }


def _ranked(counts: dict[str, int], name: str) -> list[dict[str, Any]]:
    return [{name: value, "count": n} for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _objections_by_outcome(counts: list[store.ObjectionCount]) -> dict[str, list[dict[str, Any]]]:
    """Per outcome, each vocabulary key with the deals that raised it, and the texts it was
    recorded as (each with its deals), most frequent first."""
    keys: dict[str, dict[str, int]] = {outcome: {} for outcome in OUTCOMES}
    texts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for item in counts:
        if item.text is None:
            keys[item.outcome][item.key] = item.count
        else:
            texts[(item.outcome, item.key)][item.text] = item.count
    return {
        outcome: [
            {"key": key, "count": n, "texts": _ranked(texts[(outcome, key)], "text")}
            for key, n in sorted(keys[outcome].items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        for outcome in OUTCOMES
    }


OUTCOMES = ("lost", "won", "open")


async def feedback_report(
    conn: asyncpg.Connection, state: store.ProjectionState, period: Period, filters: Filters,
    attribution: AttributionModel, clock: Clock,
) -> dict[str, Any]:  # fmt: skip
    """What sales tells marketing: the lost reasons and objections of the deals lost in the
    period, the reasons of the handoffs rejected and of the leads disqualified in it, in total
    and by campaign; the objections of the deals lost, won and open, by vocabulary key."""
    reasons, objections, lost = await store.lost_feedback(conn, period, filters, attribution)
    rejections, disqualifications, keyed = await store.sales_feedback(conn, period, filters, attribution, clock.now)
    kinds = ("reasons", "objections", "rejections", "disqualifications")
    totals: dict[str, dict[str, int]] = {kind: defaultdict(int) for kind in kinds}
    by_campaign: dict[str | None, dict[str, dict[str, int]]] = defaultdict(
        lambda: {kind: defaultdict(int) for kind in kinds}
    )
    for kind, items in zip(kinds, (reasons, objections, rejections, disqualifications), strict=True):
        for item in items:
            totals[kind][item.value] += item.count
            by_campaign[item.campaign_id][kind][item.value] += item.count

    def count(campaign: str | None, kind: str) -> int:
        return sum(by_campaign[campaign][kind].values()) if campaign in by_campaign else 0

    # Every lost deal has one reason, every rejected handoff one, every counted move one.
    campaigns = sorted(
        by_campaign,
        key=lambda c: (-lost.get(c, 0), -count(c, "rejections"), -count(c, "disqualifications"), c is None, c or ""),
    )
    return {
        "from": iso(period.local(period.start)),
        "to": iso(period.local(period.end)),
        "filters": filters.as_dict(),
        "attribution": attribution,
        "deals_lost": sum(lost.values()),
        "lost_reasons": _ranked(totals["reasons"], "reason"),
        "objections": _ranked(totals["objections"], "objection"),
        "deals_rejected": sum(totals["rejections"].values()),
        "rejection_reasons": _ranked(totals["rejections"], "reason"),
        "disqualifications": sum(totals["disqualifications"].values()),
        "disqualification_reasons": _ranked(totals["disqualifications"], "reason"),
        "objections_by_outcome": _objections_by_outcome(keyed),
        "campaigns": [
            {
                "campaign_id": campaign,
                "deals_lost": lost.get(campaign, 0),
                "lost_reasons": _ranked(by_campaign[campaign]["reasons"], "reason"),
                "objections": _ranked(by_campaign[campaign]["objections"], "objection"),
                "deals_rejected": count(campaign, "rejections"),
                "rejection_reasons": _ranked(by_campaign[campaign]["rejections"], "reason"),
                "disqualifications": count(campaign, "disqualifications"),
                "disqualification_reasons": _ranked(by_campaign[campaign]["disqualifications"], "reason"),
            }
            for campaign in campaigns
        ],
        "as_of": iso(state.as_of),
    }


# --- shared goals ---------------------------------------------------------------------


async def goal_view(conn: asyncpg.Connection, goal: asyncpg.Record, currency: str, clock: Clock) -> dict[str, Any]:
    """A goal with its progress: its actual counted as /v1/kpis counts that KPI (first-touch
    attribution, the goal's period and filters), as of the clock's now."""
    period, metric = Period(goal["starts_at"], goal["ends_at"]), goal["metric"]
    groups = await store.kpi_aggregates(
        conn, [period], Filters(goal["campaign_id"], goal["channel"]), "first_touch", currency,
        now=clock.now, sla=clock.sla, only=GOAL_QUERIES[metric],
    )  # fmt: skip
    actual = goal_actual(metric, groups.get((0, None), RawAggregates()))
    progress = goal_progress(metric, actual, goal["target"], period, clock.now)
    return {
        "goal_id": str(goal["goal_id"]),
        "name": goal["name"],
        "team": goal["team"],
        "metric": metric,
        "target": progress["target"],
        "from": iso(period.start),
        "to": iso(period.end),
        "campaign_id": goal["campaign_id"],
        "channel": goal["channel"],
        "currency": currency,
        "created_at": iso(goal["created_at"]),
        "updated_at": iso(goal["updated_at"]),
        "progress": progress,
    }


async def put_goal(
    pool: asyncpg.Pool, goal_id: uuid.UUID, spec: store.GoalSpec, currency: str, clock: Clock
) -> tuple[dict[str, Any], bool]:
    """Create or replace a goal; returns (the goal with its progress, created)."""
    async with unit_of_work(pool) as uow:
        goal, created = await store.put_goal(uow.conn, goal_id, spec)
        return await goal_view(uow.conn, goal, currency, clock), created


async def delete_goal(pool: asyncpg.Pool, goal_id: uuid.UUID) -> None:
    async with unit_of_work(pool) as uow:
        if not await store.delete_goal(uow.conn, goal_id):
            raise NotFound(f"no goal {goal_id}")


async def goal_report(conn: asyncpg.Connection, goal_id: uuid.UUID, currency: str, clock: Clock) -> dict[str, Any]:
    goal = await store.get_goal(conn, goal_id)
    if goal is None:
        raise NotFound(f"no goal {goal_id}")
    return await goal_view(conn, goal, currency, clock)


async def goals_page(
    conn: asyncpg.Connection, active_at: datetime | None, team: str | None,
    after: tuple[datetime, uuid.UUID] | None, limit: int, currency: str, clock: Clock,
) -> dict[str, Any]:  # fmt: skip
    rows, next_cursor = page_of(
        await store.list_goals(conn, active_at, team, after, limit + 1), limit,
        lambda r: (r["created_at"], r["goal_id"]),
    )  # fmt: skip
    return {"items": [await goal_view(conn, row, currency, clock) for row in rows], "next_cursor": next_cursor}


# --- the handoffs past their SLA --------------------------------------------------------


async def overdue_page(
    conn: asyncpg.Connection, filters: Filters, attribution: AttributionModel,
    after: tuple[datetime, uuid.UUID] | None, limit: int, clock: Clock,
) -> dict[str, Any]:  # fmt: skip
    """A sales manager's work queue: the handoffs waiting past the SLA, oldest first."""
    rows, next_cursor = page_of(
        await store.overdue_handoffs(conn, filters, attribution, clock.now, clock.sla, after, limit + 1), limit,
        lambda r: (r["created_at"], r["deal_id"]),
    )  # fmt: skip
    return {
        "items": [
            {
                "deal_id": str(r["deal_id"]),
                "lead_id": str(r["lead_id"]),
                "campaign_id": r["campaign_id"],
                "channel": r["channel"],
                "created_at": iso(r["created_at"]),
                "hours_waiting": rounded((clock.now - r["created_at"]) / timedelta(hours=1)),
            }
            for r in rows
        ],
        "next_cursor": next_cursor,
        "sla_accept_hours": clock.sla / timedelta(hours=1),
        "now": iso(clock.now),
        "filters": filters.as_dict(),
        "attribution": attribution,
    }
