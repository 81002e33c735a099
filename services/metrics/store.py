"""Metrics' SQL: one upsert statement per applied event, and the KPI aggregates.

Every write statement also bumps `projection_state` (version, as_of) in a CTE, so an event's
effect and the state the API's ETags derive from change in one round trip and one transaction.
Merges are order-independent: created_at and first touch keep the earliest, last touch the
latest, stage ranks and deal flags only go up.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.metrics.domain import AttributionModel, BreakdownBy, Filters, Period, RawAggregates
from shared.events import Attribution

# --- writes ---------------------------------------------------------------------------

_BUMP_STATE = """state AS (
    UPDATE projection_state SET version = version + 1, as_of = GREATEST(as_of, $1::timestamptz)
    WHERE id = 1)"""


def _earlier(prefix: str, op: str) -> str:
    """Is the incoming touch earlier (op '<') / later (op '>') than the stored one? Ties are
    broken by the touch's values so that the result never depends on arrival order."""
    return (
        f"(EXCLUDED.{prefix}_touch_at, coalesce(EXCLUDED.{prefix}_campaign_id, ''), "
        f"coalesce(EXCLUDED.{prefix}_channel, '')) {op} "
        f"(l.{prefix}_touch_at, coalesce(l.{prefix}_campaign_id, ''), coalesce(l.{prefix}_channel, ''))"
    )


_FIRST_WINS = _earlier("first", "<")
_LAST_WINS = _earlier("last", ">")

# $2..$12: the lead's facts as one event knows them.
_UPSERT_LEAD = f"""
    INSERT INTO leads AS l (lead_id, created_at, first_campaign_id, first_channel, first_touch_at,
                            last_campaign_id, last_channel, last_touch_at, stage_rank, has_deal, first_won_at)
    VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (lead_id) DO UPDATE SET
        created_at = LEAST(l.created_at, EXCLUDED.created_at),
        first_campaign_id = CASE WHEN {_FIRST_WINS} THEN EXCLUDED.first_campaign_id ELSE l.first_campaign_id END,
        first_channel = CASE WHEN {_FIRST_WINS} THEN EXCLUDED.first_channel ELSE l.first_channel END,
        first_touch_at = LEAST(l.first_touch_at, EXCLUDED.first_touch_at),
        last_campaign_id = CASE WHEN {_LAST_WINS} THEN EXCLUDED.last_campaign_id ELSE l.last_campaign_id END,
        last_channel = CASE WHEN {_LAST_WINS} THEN EXCLUDED.last_channel ELSE l.last_channel END,
        last_touch_at = GREATEST(l.last_touch_at, EXCLUDED.last_touch_at),
        stage_rank = GREATEST(l.stage_rank, EXCLUDED.stage_rank),
        has_deal = l.has_deal OR EXCLUDED.has_deal,
        first_won_at = LEAST(l.first_won_at, EXCLUDED.first_won_at)"""

_LEAD_EVENT_SQL = f"WITH {_BUMP_STATE} {_UPSERT_LEAD}"

# A deal keeps its earliest win and earliest loss (each with the values that came with it).
_DEAL_EVENT_SQL = f"""
WITH {_BUMP_STATE}, lead AS ({_UPSERT_LEAD})
INSERT INTO deals AS d (deal_id, lead_id, created_at, won_at, won_amount, currency, lost_at, lost_reason, objections)
VALUES ($13, $2, $14, $15, $16, $17, $18, $19, coalesce($20::text[], '{{}}'))
ON CONFLICT (deal_id) DO UPDATE SET
    created_at = LEAST(d.created_at, EXCLUDED.created_at),
    won_amount = CASE WHEN EXCLUDED.won_at < d.won_at OR d.won_at IS NULL
                      THEN coalesce(EXCLUDED.won_amount, d.won_amount) ELSE d.won_amount END,
    currency = CASE WHEN EXCLUDED.won_at < d.won_at OR d.won_at IS NULL
                    THEN coalesce(EXCLUDED.currency, d.currency) ELSE d.currency END,
    won_at = LEAST(d.won_at, EXCLUDED.won_at),
    lost_reason = CASE WHEN EXCLUDED.lost_at < d.lost_at OR d.lost_at IS NULL
                       THEN coalesce(EXCLUDED.lost_reason, d.lost_reason) ELSE d.lost_reason END,
    objections = CASE WHEN EXCLUDED.lost_at < d.lost_at OR (d.lost_at IS NULL AND EXCLUDED.lost_at IS NOT NULL)
                      THEN EXCLUDED.objections ELSE d.objections END,
    lost_at = LEAST(d.lost_at, EXCLUDED.lost_at)"""

_REVENUE_EVENT_SQL = f"""
WITH {_BUMP_STATE}, lead AS ({_UPSERT_LEAD})
INSERT INTO revenue (revenue_id, lead_id, amount, currency, kind, occurred_at)
VALUES ($13, $2, $14, $15, $16, $17)
ON CONFLICT (revenue_id) DO NOTHING"""

_CAMPAIGN_EVENT_SQL = f"""
WITH {_BUMP_STATE}
INSERT INTO campaign_facts (event_id, occurred_at, campaign_id, channel, impressions, clicks, spend, currency)
VALUES ($2, $1, $3, $4, $5, $6, $7, $8)
ON CONFLICT (event_id) DO NOTHING"""


@dataclass(frozen=True)
class LeadFacts:
    """What one event tells about its lead; merged into the lead's row."""

    lead_id: uuid.UUID
    attribution: Attribution
    created_at: datetime | None = None
    stage_rank: int = 0
    has_deal: bool = False
    first_won_at: datetime | None = None

    def params(self) -> tuple[Any, ...]:
        first, last = self.attribution.first_touch, self.attribution.last_touch
        return (
            self.lead_id, self.created_at,
            first.campaign_id, first.channel, first.occurred_at,
            last.campaign_id, last.channel, last.occurred_at,
            self.stage_rank, self.has_deal, self.first_won_at,
        )  # fmt: skip


async def apply_lead_facts(conn: asyncpg.Connection, occurred_at: datetime, lead: LeadFacts) -> None:
    await conn.execute(_LEAD_EVENT_SQL, occurred_at, *lead.params())


@dataclass(frozen=True)
class DealFacts:
    deal_id: uuid.UUID
    created_at: datetime | None = None
    won_at: datetime | None = None
    won_amount: Decimal | None = None
    currency: str | None = None
    lost_at: datetime | None = None
    lost_reason: str | None = None
    objections: Sequence[str] | None = None


async def apply_deal_facts(conn: asyncpg.Connection, occurred_at: datetime, lead: LeadFacts, deal: DealFacts) -> None:
    await conn.execute(
        _DEAL_EVENT_SQL, occurred_at, *lead.params(),
        deal.deal_id, deal.created_at, deal.won_at, deal.won_amount, deal.currency,
        deal.lost_at, deal.lost_reason, list(deal.objections) if deal.objections is not None else None,
    )  # fmt: skip


async def apply_revenue(
    conn: asyncpg.Connection, occurred_at: datetime, lead: LeadFacts,
    revenue_id: uuid.UUID, amount: Decimal, currency: str, kind: str, revenue_at: datetime,
) -> None:  # fmt: skip
    await conn.execute(_REVENUE_EVENT_SQL, occurred_at, *lead.params(), revenue_id, amount, currency, kind, revenue_at)


async def apply_campaign_fact(
    conn: asyncpg.Connection, event_id: uuid.UUID, occurred_at: datetime, campaign_id: str, channel: str,
    impressions: int, clicks: int, spend: Decimal, currency: str | None,
) -> None:  # fmt: skip
    await conn.execute(
        _CAMPAIGN_EVENT_SQL, occurred_at, event_id, campaign_id, channel, impressions, clicks, spend, currency
    )


# --- reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectionState:
    epoch: str
    version: int
    as_of: datetime | None


async def projection_state(conn: asyncpg.Connection) -> ProjectionState:
    row = await conn.fetchrow("SELECT epoch, version, as_of FROM projection_state WHERE id = 1")
    return ProjectionState(str(row["epoch"]), row["version"], row["as_of"])


# $1/$2: bucket bounds, $3/$4: campaign/channel filters, $5: the reporting currency.
_BUCKETS = "WITH b AS (SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS b(lo, hi, i))"


def _in(column: str) -> str:
    return f"{column} >= b.lo AND {column} < b.hi"


def _lead_filter(attribution: AttributionModel) -> str:
    prefix = "first" if attribution == "first_touch" else "last"
    return (
        f"($3::text IS NULL OR l.{prefix}_campaign_id = $3) AND ($4::text IS NULL OR l.{prefix}_channel = $4)"
    )


def _dimensions(attribution: AttributionModel, by: BreakdownBy | None) -> tuple[str, str]:
    """(the group column for lead-based facts, the one for campaign facts)."""
    prefix = "first" if attribution == "first_touch" else "last"
    if by == "campaign":
        return f"l.{prefix}_campaign_id", "c.campaign_id"
    if by == "channel":
        return f"l.{prefix}_channel", "c.channel"
    return "NULL::text", "NULL::text"


def _kpi_queries(attribution: AttributionModel, by: BreakdownBy | None) -> dict[str, str]:
    lead_dim, campaign_dim = _dimensions(attribution, by)
    lead_filter = _lead_filter(attribution)
    cycle_days = "extract(epoch FROM d.won_at - l.created_at) / 86400"
    return {
        "campaign": f"""{_BUCKETS}
            SELECT b.i, {campaign_dim} AS dim, sum(c.impressions)::bigint AS impressions,
                   sum(c.clicks)::bigint AS clicks,
                   coalesce(sum(c.spend) FILTER (WHERE c.currency IS NULL OR c.currency = $5), 0) AS spend
            FROM campaign_facts c JOIN b ON {_in("c.occurred_at")}
            WHERE ($3::text IS NULL OR c.campaign_id = $3) AND ($4::text IS NULL OR c.channel = $4)
            GROUP BY 1, 2""",
        # The cohort of leads created in the bucket, and how far each has got by now.
        "cohort": f"""{_BUCKETS}
            SELECT b.i, {lead_dim} AS dim, count(*) AS leads,
                   count(*) FILTER (WHERE l.stage_rank >= 1 OR l.has_deal) AS mql,
                   count(*) FILTER (WHERE l.stage_rank >= 2 OR l.has_deal) AS sql,
                   count(*) FILTER (WHERE l.has_deal) AS opportunity,
                   count(*) FILTER (WHERE l.first_won_at IS NOT NULL) AS customer
            FROM leads l JOIN b ON {_in("l.created_at")}
            WHERE {lead_filter}
            GROUP BY 1, 2""",
        "won": f"""{_BUCKETS}
            SELECT b.i, {lead_dim} AS dim, count(*) AS deals_won,
                   coalesce(sum(d.won_amount) FILTER (WHERE d.currency = $5), 0) AS won_revenue,
                   avg({cycle_days})::float8 AS cycle_average,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY {cycle_days}) AS cycle_median
            FROM deals d JOIN leads l USING (lead_id) JOIN b ON {_in("d.won_at")}
            WHERE {lead_filter}
            GROUP BY 1, 2""",
        "lost": f"""{_BUCKETS}
            SELECT b.i, {lead_dim} AS dim, count(*) AS deals_lost
            FROM deals d JOIN leads l USING (lead_id) JOIN b ON {_in("d.lost_at")}
            WHERE {lead_filter}
            GROUP BY 1, 2""",
        "recorded": f"""{_BUCKETS}
            SELECT b.i, {lead_dim} AS dim, sum(r.amount) AS recorded_revenue
            FROM revenue r JOIN leads l USING (lead_id) JOIN b ON {_in("r.occurred_at")}
            WHERE r.currency = $5 AND {lead_filter}
            GROUP BY 1, 2""",
        # New customers of the bucket and everything they have paid so far, any date.
        "new_customers": f"""{_BUCKETS}
            SELECT b.i, {lead_dim} AS dim, count(*) AS new_customers,
                   coalesce(sum(
                       coalesce((SELECT sum(won_amount) FROM deals
                                 WHERE lead_id = l.lead_id AND won_at IS NOT NULL AND currency = $5), 0)
                     + coalesce((SELECT sum(amount) FROM revenue
                                 WHERE lead_id = l.lead_id AND currency = $5), 0)), 0)
                   AS new_customers_lifetime_revenue
            FROM leads l JOIN b ON {_in("l.first_won_at")}
            WHERE {lead_filter}
            GROUP BY 1, 2""",
    }


GroupKey = tuple[int, str | None]  # (bucket number from 0, breakdown value or None)


async def kpi_aggregates(
    conn: asyncpg.Connection,
    buckets: Sequence[Period],
    filters: Filters,
    attribution: AttributionModel,
    currency: str,
    by: BreakdownBy | None = None,
) -> dict[GroupKey, RawAggregates]:
    """Raw counts and sums per (bucket, breakdown value). Groups with no facts are absent."""
    args = ([p.start for p in buckets], [p.end for p in buckets], filters.campaign_id, filters.channel, currency)
    groups: dict[GroupKey, RawAggregates] = {}
    for query in _kpi_queries(attribution, by).values():
        used = args if "$5" in query else args[:4]  # Postgres refuses unused parameters
        for row in await conn.fetch(query, *used):
            raw = groups.setdefault((row["i"] - 1, row["dim"]), RawAggregates())
            for name, value in row.items():
                if name == "cycle_average":
                    raw.sales_cycle_average = value
                elif name == "cycle_median":
                    raw.sales_cycle_median = value
                elif name not in ("i", "dim"):
                    setattr(raw, name, value)
    return groups


@dataclass(frozen=True)
class FeedbackCount:
    campaign_id: str | None
    value: str
    count: int


async def lost_feedback(
    conn: asyncpg.Connection, period: Period, filters: Filters, attribution: AttributionModel
) -> tuple[list[FeedbackCount], list[FeedbackCount], dict[str | None, int]]:
    """(lost reasons, objections, lost deals) per campaign of the deals lost in the period.
    An objection counts the lost deals that raised it."""
    campaign = f"l.{'first' if attribution == 'first_touch' else 'last'}_campaign_id"
    lost = "FROM deals d JOIN leads l USING (lead_id)"
    where = f"WHERE d.lost_at >= $1 AND d.lost_at < $2 AND {_lead_filter(attribution)}"
    args = (period.start, period.end, filters.campaign_id, filters.channel)
    reasons = await conn.fetch(
        f"SELECT {campaign} AS campaign_id, d.lost_reason AS value, count(*) AS n {lost} {where} GROUP BY 1, 2",
        *args,
    )
    objections = await conn.fetch(
        f"""SELECT {campaign} AS campaign_id, o.value, count(DISTINCT d.deal_id) AS n
            {lost} CROSS JOIN LATERAL unnest(d.objections) AS o(value) {where} GROUP BY 1, 2""",
        *args,
    )
    deals = await conn.fetch(f"SELECT {campaign} AS campaign_id, count(*) AS n {lost} {where} GROUP BY 1", *args)
    return (
        [FeedbackCount(r["campaign_id"], r["value"] or "", r["n"]) for r in reasons],
        [FeedbackCount(r["campaign_id"], r["value"], r["n"]) for r in objections],
        {r["campaign_id"]: r["n"] for r in deals},
    )
