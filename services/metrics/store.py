"""Metrics' SQL: the projection writes and the KPI aggregates.

Handlers add each event's facts to a `ProjectionBatch`; the batch is written just before the
consumer's transaction commits, one statement per table, together with `projection_state`
(version, as_of), so facts, dedupe rows and the state ETags derive from commit together.
Inserting campaign facts also adds them to the hourly rollup `campaign_hourly`, in the same
statement, by a trigger (migrations/002_campaign_hourly.sql). Page views are split into
sessions as they are written (`_SESSIONIZE`), visitor by visitor under the visitor's row lock.
Merges are order-independent (the same rules inside a batch and against stored rows):
created_at and first touch keep the earliest, last touch the latest, stage ranks and deal
flags only go up, a lead keeps the earliest arrival at each stage, a deal keeps its earliest
win, loss, acceptance and rejection; a deal's values over time, its objections and the
disqualifications are insert-only sets; a lead's opportunity is recomputed from its deals.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg

from shared.events import Attribution

from .domain import (
    DEFAULT_SLA,
    SESSION_TIMEOUT,
    AttributionModel,
    BreakdownBy,
    Filters,
    Period,
    RawAggregates,
    cut_hours,
)

# --- writes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFacts:
    """What one event tells about its lead."""

    lead_id: uuid.UUID
    attribution: Attribution
    created_at: datetime | None = None
    stage_rank: int = 0
    has_deal: bool = False
    first_won_at: datetime | None = None
    mql_at: datetime | None = None  # it reached mql (or further) then
    sql_at: datetime | None = None


@dataclass(frozen=True)
class DealFacts:
    deal_id: uuid.UUID
    lead_id: uuid.UUID
    created_at: datetime | None = None
    won_at: datetime | None = None
    won_amount: Decimal | None = None
    currency: str | None = None
    lost_at: datetime | None = None
    lost_reason: str | None = None
    objections: Sequence[str] | None = None
    handoff: bool = False
    accepted_at: datetime | None = None
    rejected_at: datetime | None = None
    rejection_reason: str | None = None


@dataclass(frozen=True)
class DealValueFacts:
    """A deal's values from `at` on: `details` (amount, currency, expected close date) or
    `stage` (its stage's probability)."""

    deal_id: uuid.UUID
    kind: str
    at: datetime
    event_id: uuid.UUID
    amount: Decimal | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    probability: Decimal | None = None


@dataclass(frozen=True)
class ObjectionFacts:
    deal_id: uuid.UUID
    key: str
    text: str


@dataclass(frozen=True)
class DisqualificationFacts:
    event_id: uuid.UUID
    lead_id: uuid.UUID
    occurred_at: datetime
    reason: str


@dataclass(frozen=True)
class RevenueFacts:
    revenue_id: uuid.UUID
    lead_id: uuid.UUID
    amount: Decimal
    currency: str
    kind: str
    occurred_at: datetime


@dataclass(frozen=True)
class CampaignFacts:
    event_id: uuid.UUID
    occurred_at: datetime
    campaign_id: str
    channel: str
    impressions: int
    clicks: int
    spend: Decimal
    currency: str | None


@dataclass(frozen=True)
class PageViewFacts:
    event_id: uuid.UUID
    anonymous_id: str
    occurred_at: datetime
    campaign_id: str | None  # utm.campaign
    channel: str | None  # utm.medium


@dataclass(frozen=True)
class VisitorLink:
    """A lead event said this anonymous id is this lead's."""

    anonymous_id: str
    lead_id: uuid.UUID


@dataclass
class ProjectionBatch:
    """The facts of one transaction's events, written by `write_batch`."""

    leads: list[LeadFacts] = field(default_factory=list)
    deals: list[DealFacts] = field(default_factory=list)
    revenue: list[RevenueFacts] = field(default_factory=list)
    campaign: list[CampaignFacts] = field(default_factory=list)
    page_views: list[PageViewFacts] = field(default_factory=list)
    links: list[VisitorLink] = field(default_factory=list)
    deal_values: list[DealValueFacts] = field(default_factory=list)
    objections: list[ObjectionFacts] = field(default_factory=list)
    disqualifications: list[DisqualificationFacts] = field(default_factory=list)
    events: int = 0
    as_of: datetime | None = None

    def applied(self, occurred_at: datetime) -> None:
        self.events += 1
        self.as_of = occurred_at if self.as_of is None else max(self.as_of, occurred_at)


def _columns(rows: Sequence[object], *names: str) -> list[list]:
    return [[getattr(row, name) for row in rows] for name in names]


# Ties on the touch time are broken by the touch's values, so arrival order never matters.
_FIRST_ORDER = "first_touch_at, coalesce(first_campaign_id, ''), coalesce(first_channel, '')"
_LAST_ORDER = "last_touch_at DESC, coalesce(last_campaign_id, '') DESC, coalesce(last_channel, '') DESC"


def _incoming_wins(prefix: str, op: str) -> str:
    return (
        f"(EXCLUDED.{prefix}_touch_at, coalesce(EXCLUDED.{prefix}_campaign_id, ''), "
        f"coalesce(EXCLUDED.{prefix}_channel, '')) {op} "
        f"(l.{prefix}_touch_at, coalesce(l.{prefix}_campaign_id, ''), coalesce(l.{prefix}_channel, ''))"
    )


_FIRST_WINS, _LAST_WINS = _incoming_wins("first", "<"), _incoming_wins("last", ">")

_UPSERT_LEADS = f"""
WITH incoming AS (
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::text[], $8::timestamptz[], $9::smallint[], $10::bool[],
                         $11::timestamptz[], $12::timestamptz[], $13::timestamptz[])
        AS t(lead_id, created_at, first_campaign_id, first_channel, first_touch_at,
             last_campaign_id, last_channel, last_touch_at, stage_rank, has_deal, first_won_at, mql_at, sql_at)
), merged AS (
    SELECT lead_id, min(created_at) AS created_at,
           (array_agg(first_campaign_id ORDER BY {_FIRST_ORDER}))[1] AS first_campaign_id,
           (array_agg(first_channel ORDER BY {_FIRST_ORDER}))[1] AS first_channel,
           min(first_touch_at) AS first_touch_at,
           (array_agg(last_campaign_id ORDER BY {_LAST_ORDER}))[1] AS last_campaign_id,
           (array_agg(last_channel ORDER BY {_LAST_ORDER}))[1] AS last_channel,
           max(last_touch_at) AS last_touch_at,
           max(stage_rank) AS stage_rank, bool_or(has_deal) AS has_deal, min(first_won_at) AS first_won_at,
           min(mql_at) AS mql_at, min(sql_at) AS sql_at
    FROM incoming GROUP BY lead_id
)
INSERT INTO leads AS l (lead_id, created_at, first_campaign_id, first_channel, first_touch_at,
                        last_campaign_id, last_channel, last_touch_at, stage_rank, has_deal, first_won_at,
                        mql_at, sql_at)
SELECT * FROM merged
ON CONFLICT (lead_id) DO UPDATE SET
    created_at = LEAST(l.created_at, EXCLUDED.created_at),
    first_campaign_id = CASE WHEN {_FIRST_WINS} THEN EXCLUDED.first_campaign_id
                        ELSE l.first_campaign_id END,
    first_channel = CASE WHEN {_FIRST_WINS} THEN EXCLUDED.first_channel ELSE l.first_channel END,
    first_touch_at = LEAST(l.first_touch_at, EXCLUDED.first_touch_at),
    last_campaign_id = CASE WHEN {_LAST_WINS} THEN EXCLUDED.last_campaign_id ELSE l.last_campaign_id END,
    last_channel = CASE WHEN {_LAST_WINS} THEN EXCLUDED.last_channel ELSE l.last_channel END,
    last_touch_at = GREATEST(l.last_touch_at, EXCLUDED.last_touch_at),
    stage_rank = GREATEST(l.stage_rank, EXCLUDED.stage_rank),
    has_deal = l.has_deal OR EXCLUDED.has_deal,
    first_won_at = LEAST(l.first_won_at, EXCLUDED.first_won_at),
    mql_at = LEAST(l.mql_at, EXCLUDED.mql_at),
    sql_at = LEAST(l.sql_at, EXCLUDED.sql_at)"""

_UPSERT_DEALS = """
WITH incoming AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::numeric[],
                         $6::text[], $7::timestamptz[], $8::text[], $9::jsonb[], $10::bool[], $11::timestamptz[],
                         $12::timestamptz[], $13::text[])
        AS t(deal_id, lead_id, created_at, won_at, won_amount, currency, lost_at, lost_reason, objections,
             handoff, accepted_at, rejected_at, rejection_reason)
), merged AS (
    SELECT deal_id, (array_agg(lead_id))[1] AS lead_id, min(created_at) AS created_at,
           min(won_at) AS won_at,
           (array_agg(won_amount ORDER BY won_at, won_amount) FILTER (WHERE won_at IS NOT NULL))[1] AS won_amount,
           (array_agg(currency ORDER BY won_at, won_amount) FILTER (WHERE won_at IS NOT NULL))[1] AS currency,
           min(lost_at) AS lost_at,
           (array_agg(lost_reason ORDER BY lost_at, lost_reason) FILTER (WHERE lost_at IS NOT NULL))[1]
               AS lost_reason,
           (array_agg(objections ORDER BY lost_at, lost_reason) FILTER (WHERE lost_at IS NOT NULL))[1]
               AS objections,
           bool_or(handoff) AS handoff, min(accepted_at) AS accepted_at, min(rejected_at) AS rejected_at,
           (array_agg(rejection_reason ORDER BY rejected_at, rejection_reason)
               FILTER (WHERE rejected_at IS NOT NULL))[1] AS rejection_reason
    FROM incoming GROUP BY deal_id
)
INSERT INTO deals AS d (deal_id, lead_id, created_at, won_at, won_amount, currency, lost_at, lost_reason,
                        objections, handoff, accepted_at, rejected_at, rejection_reason)
SELECT deal_id, lead_id, created_at, won_at, won_amount, currency, lost_at, lost_reason,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(objections, '[]'))),
       handoff, accepted_at, rejected_at, rejection_reason
FROM merged
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
    lost_at = LEAST(d.lost_at, EXCLUDED.lost_at),
    handoff = d.handoff OR EXCLUDED.handoff,
    accepted_at = LEAST(d.accepted_at, EXCLUDED.accepted_at),
    rejection_reason = CASE WHEN (EXCLUDED.rejected_at, EXCLUDED.rejection_reason) < (d.rejected_at, d.rejection_reason)
                                 OR d.rejected_at IS NULL
                            THEN coalesce(EXCLUDED.rejection_reason, d.rejection_reason) ELSE d.rejection_reason END,
    rejected_at = LEAST(d.rejected_at, EXCLUDED.rejected_at)"""

# A lead's opportunity follows from its deal rows (a rejection takes a deal out), so it is
# recomputed from them for the leads whose deals a batch wrote, not merged from events.
_RECOMPUTE_OPPORTUNITIES = """
UPDATE leads l SET opportunity = o.opportunity, opportunity_at = o.opportunity_at
FROM (SELECT lead_id, bool_or(rejected_at IS NULL) AS opportunity,
             min(created_at) FILTER (WHERE rejected_at IS NULL) AS opportunity_at
      FROM deals WHERE lead_id = ANY($1::uuid[]) GROUP BY lead_id ORDER BY lead_id) o
WHERE l.lead_id = o.lead_id AND (l.opportunity, l.opportunity_at) IS DISTINCT FROM (o.opportunity, o.opportunity_at)"""

_INSERT_DEAL_VALUES = """
INSERT INTO deal_values (deal_id, kind, at, event_id, amount, currency, expected_close_date, probability)
SELECT DISTINCT ON (deal_id, kind, at, event_id) *
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::uuid[], $5::numeric[], $6::text[], $7::date[],
            $8::numeric[]) AS t(deal_id, kind, at, event_id, amount, currency, expected_close_date, probability)
ON CONFLICT DO NOTHING"""

_INSERT_OBJECTIONS = """
INSERT INTO deal_objections (deal_id, key, text)
SELECT DISTINCT * FROM unnest($1::uuid[], $2::text[], $3::text[])
ON CONFLICT DO NOTHING"""

_INSERT_DISQUALIFICATIONS = """
INSERT INTO disqualifications (event_id, lead_id, occurred_at, reason)
SELECT DISTINCT ON (event_id) *
FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[]) AS t(event_id, lead_id, occurred_at, reason)
ON CONFLICT (event_id) DO NOTHING"""

_INSERT_REVENUE = """
INSERT INTO revenue (revenue_id, lead_id, amount, currency, kind, occurred_at)
SELECT DISTINCT ON (revenue_id) *
FROM unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::text[], $5::text[], $6::timestamptz[])
    AS t(revenue_id, lead_id, amount, currency, kind, occurred_at)
ON CONFLICT (revenue_id) DO NOTHING"""

_INSERT_CAMPAIGN_FACTS = """
INSERT INTO campaign_facts (event_id, occurred_at, campaign_id, channel, impressions, clicks, spend, currency)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                     $7::numeric[], $8::text[])
ON CONFLICT (event_id) DO NOTHING"""

# Every write about a visitor starts by locking its row (creating it if new), all of the
# batch's visitors in one statement and in one order, so two transactions (replicas, a page
# view batch and a lead batch) never split the same visitor's sessions at once nor deadlock.
# ON CONFLICT DO UPDATE locks every conflicting row, also those its WHERE leaves unchanged.
_LOCK_VISITORS = """
INSERT INTO visitors AS v (anonymous_id, linked)
SELECT anonymous_id, bool_or(linked) FROM unnest($1::text[], $2::bool[]) AS t(anonymous_id, linked)
GROUP BY anonymous_id ORDER BY anonymous_id
ON CONFLICT (anonymous_id) DO UPDATE SET linked = true WHERE EXCLUDED.linked AND NOT v.linked"""

# Run after the lock, in a statement of its own: it must see sessions committed meanwhile.
_LINK_VISITORS = """
WITH links AS (
    SELECT DISTINCT v.visitor, t.lead_id
    FROM unnest($1::text[], $2::uuid[]) AS t(anonymous_id, lead_id) JOIN visitors v USING (anonymous_id)
), added AS (
    INSERT INTO visitor_leads (visitor, lead_id) SELECT visitor, lead_id FROM links ON CONFLICT DO NOTHING
)
UPDATE sessions s SET linked = true
FROM (SELECT DISTINCT visitor FROM links) l
WHERE s.visitor = l.visitor AND NOT s.linked"""

# Splits the batch's visitors' page views into sessions. Per visitor, page views in
# (occurred_at, event_id) order are a left-to-right walk whose state after a page view is
# (its time, its session's landing UTM): so the walk restarts from the last stored page view
# before the earliest new one (`seed`, carrying that state), over every page view after it
# (`seq`: old ones, which may move, and new ones). In-order arrival walks the new ones only.
# A page view starts a session when it is the visitor's first, comes $6 or more after the
# previous one, or carries a campaign other than the visit's latest so far (the visit: the
# page views since the last inactivity start; its latest campaign is the session's landing
# one, none = null). Then: sessions diffed (deleted/inserted), old page views that moved
# updated, new ones inserted, and the hourly rollup adjusted by the net deltas.
_SESSIONIZE = """
WITH incoming AS (
    SELECT DISTINCT ON (t.event_id) v.visitor, v.linked, t.occurred_at, t.event_id, t.campaign_id, t.channel
    FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[])
        AS t(anonymous_id, occurred_at, event_id, campaign_id, channel)
    JOIN visitors v USING (anonymous_id)
    ORDER BY t.event_id
), fresh AS (
    SELECT i.* FROM incoming i
    WHERE NOT EXISTS (SELECT FROM page_views p WHERE p.visitor = i.visitor AND p.occurred_at = i.occurred_at
                                                 AND p.event_id = i.event_id)
), earliest AS (
    SELECT DISTINCT ON (visitor) visitor, linked, occurred_at, event_id
    FROM fresh ORDER BY visitor, occurred_at, event_id
), seed AS (
    SELECT e.visitor, p.occurred_at, p.event_id, p.session_campaign_id AS campaign_id,
           p.session_channel AS channel
    FROM earliest e CROSS JOIN LATERAL (
        SELECT * FROM page_views p
        WHERE p.visitor = e.visitor AND p.occurred_at <= e.occurred_at
          AND (p.occurred_at, p.event_id) < (e.occurred_at, e.event_id)
        ORDER BY p.occurred_at DESC, p.event_id DESC LIMIT 1
    ) p
), seq AS (  -- kind 0: the seed (its campaign is its session's), 1: stored page views after it, 2: new ones
    SELECT visitor, occurred_at, event_id, campaign_id, channel, 0 AS kind,
           NULL::text AS old_campaign_id, NULL::text AS old_channel
    FROM seed
    UNION ALL
    SELECT p.visitor, p.occurred_at, p.event_id, p.campaign_id, p.channel, 1, p.session_campaign_id, p.session_channel
    FROM earliest e LEFT JOIN seed s USING (visitor)
    JOIN page_views p ON p.visitor = e.visitor AND (s.visitor IS NULL OR (
        p.occurred_at >= s.occurred_at AND (p.occurred_at, p.event_id) > (s.occurred_at, s.event_id)))
    UNION ALL
    SELECT visitor, occurred_at, event_id, campaign_id, channel, 2, NULL, NULL FROM fresh
), gaps AS (
    SELECT *, CASE WHEN kind = 0 THEN 0
                   WHEN lag(occurred_at) OVER w IS NULL OR occurred_at - lag(occurred_at) OVER w >= $6::interval THEN 1
                   ELSE 0 END AS visit_starts
    FROM seq WINDOW w AS (PARTITION BY visitor ORDER BY occurred_at, event_id)
), visits AS (
    SELECT *, sum(visit_starts) OVER (PARTITION BY visitor ORDER BY occurred_at, event_id) AS visit FROM gaps
), counted AS (  -- g: how many page views of the visit so far carried a campaign
    SELECT *, count(campaign_id) OVER (PARTITION BY visitor, visit ORDER BY occurred_at, event_id) AS g FROM visits
), latest AS (  -- the visit's latest campaign up to and including this page view
    SELECT *, max(campaign_id) OVER (PARTITION BY visitor, visit, g) AS visit_campaign FROM counted
), starts AS (
    SELECT *, CASE WHEN kind = 0 THEN 0 WHEN visit_starts = 1 THEN 1
                   WHEN campaign_id IS NOT NULL AND campaign_id IS DISTINCT FROM
                        lag(visit_campaign) OVER (PARTITION BY visitor, visit ORDER BY occurred_at, event_id) THEN 1
                   ELSE 0 END AS session_starts
    FROM latest
), numbered AS (
    SELECT *, sum(session_starts) OVER (PARTITION BY visitor ORDER BY occurred_at, event_id) AS session FROM starts
), assigned AS MATERIALIZED (
    SELECT *, first_value(campaign_id) OVER s AS session_campaign_id, first_value(channel) OVER s AS session_channel
    FROM numbered WINDOW s AS (PARTITION BY visitor, session ORDER BY occurred_at, event_id)
), new_sessions AS (
    SELECT visitor, occurred_at AS started_at, event_id, campaign_id, channel FROM assigned WHERE session_starts = 1
), old_sessions AS (
    SELECT s.visitor, s.started_at, s.event_id, s.campaign_id, s.channel
    FROM earliest e LEFT JOIN seed USING (visitor)
    JOIN sessions s ON s.visitor = e.visitor AND (seed.visitor IS NULL OR (
        s.started_at >= seed.occurred_at AND (s.started_at, s.event_id) > (seed.occurred_at, seed.event_id)))
), removed AS (
    DELETE FROM sessions s USING old_sessions o
    WHERE s.visitor = o.visitor AND s.started_at = o.started_at AND s.event_id = o.event_id
      AND NOT EXISTS (SELECT FROM new_sessions n WHERE n.visitor = o.visitor AND n.started_at = o.started_at
                                                   AND n.event_id = o.event_id)
), added AS (
    INSERT INTO sessions (visitor, started_at, event_id, campaign_id, channel, linked)
    SELECT n.visitor, n.started_at, n.event_id, n.campaign_id, n.channel, e.linked
    FROM new_sessions n JOIN earliest e USING (visitor)
    WHERE NOT EXISTS (SELECT FROM old_sessions o WHERE o.visitor = n.visitor AND o.started_at = n.started_at
                                                   AND o.event_id = n.event_id)
), moved AS (
    UPDATE page_views p SET session_campaign_id = a.session_campaign_id, session_channel = a.session_channel
    FROM assigned a
    WHERE a.kind = 1 AND p.visitor = a.visitor AND p.occurred_at = a.occurred_at AND p.event_id = a.event_id
      AND (a.session_campaign_id, a.session_channel) IS DISTINCT FROM (a.old_campaign_id, a.old_channel)
    RETURNING a.occurred_at, a.old_campaign_id, a.old_channel, a.session_campaign_id, a.session_channel
), inserted AS (
    INSERT INTO page_views (visitor, occurred_at, event_id, campaign_id, channel, session_campaign_id, session_channel)
    SELECT visitor, occurred_at, event_id, campaign_id, channel, session_campaign_id, session_channel
    FROM assigned WHERE kind = 2
    RETURNING occurred_at, session_campaign_id, session_channel
), deltas AS (
    SELECT occurred_at, session_campaign_id AS campaign_id, session_channel AS channel, 1 AS n FROM inserted
    UNION ALL
    SELECT occurred_at, session_campaign_id, session_channel, 1 FROM moved
    UNION ALL
    SELECT occurred_at, old_campaign_id, old_channel, -1 FROM moved
)
INSERT INTO page_view_hourly AS h (hour, campaign_id, channel, page_views)
SELECT date_trunc('hour', occurred_at, 'UTC'), campaign_id, channel, sum(n)
FROM deltas
GROUP BY 1, 2, 3
HAVING sum(n) <> 0
ORDER BY 1, 2, 3  -- the same lock order in every transaction
ON CONFLICT ON CONSTRAINT page_view_hourly_key DO UPDATE SET page_views = h.page_views + EXCLUDED.page_views"""

_BUMP_STATE = """
UPDATE projection_state SET version = version + $1, as_of = GREATEST(as_of, $2::timestamptz) WHERE id = 1"""


async def write_visitors(conn: asyncpg.Connection, page_views: Sequence[PageViewFacts],
                         links: Sequence[VisitorLink]) -> None:  # fmt: skip
    """Lock the visitors, link them to their leads, split their page views into sessions."""
    ids = [view.anonymous_id for view in page_views] + [link.anonymous_id for link in links]
    await conn.execute(_LOCK_VISITORS, ids, [False] * len(page_views) + [True] * len(links))
    if links:
        await conn.execute(_LINK_VISITORS, *_columns(links, "anonymous_id", "lead_id"))
    if page_views:
        columns = _columns(page_views, "anonymous_id", "occurred_at", "event_id", "campaign_id", "channel")
        await conn.execute(_SESSIONIZE, *columns, SESSION_TIMEOUT)


async def write_batch(conn: asyncpg.Connection, batch: ProjectionBatch) -> None:
    """A handful of statements for a whole batch of events."""
    if batch.leads:
        leads = batch.leads
        first = [lead.attribution.first_touch for lead in leads]
        last = [lead.attribution.last_touch for lead in leads]
        await conn.execute(
            _UPSERT_LEADS,
            [lead.lead_id for lead in leads], [lead.created_at for lead in leads],
            [t.campaign_id for t in first], [t.channel for t in first], [t.occurred_at for t in first],
            [t.campaign_id for t in last], [t.channel for t in last], [t.occurred_at for t in last],
            *_columns(leads, "stage_rank", "has_deal", "first_won_at", "mql_at", "sql_at"),
        )  # fmt: skip
    if batch.deals:
        deals = batch.deals
        columns = _columns(deals, "deal_id", "lead_id", "created_at", "won_at", "won_amount", "currency",
                           "lost_at", "lost_reason")  # fmt: skip
        # As JSON text: a list of lists would be read as one 2-D (rectangular) array.
        objections = [json.dumps(list(d.objections)) if d.objections is not None else None for d in deals]
        handoffs = _columns(deals, "handoff", "accepted_at", "rejected_at", "rejection_reason")
        await conn.execute(_UPSERT_DEALS, *columns, objections, *handoffs)
        await conn.execute(_RECOMPUTE_OPPORTUNITIES, sorted({d.lead_id for d in deals}))
    if batch.deal_values:
        columns = _columns(batch.deal_values, "deal_id", "kind", "at", "event_id", "amount", "currency",
                           "expected_close_date", "probability")  # fmt: skip
        await conn.execute(_INSERT_DEAL_VALUES, *columns)
    if batch.objections:
        await conn.execute(_INSERT_OBJECTIONS, *_columns(batch.objections, "deal_id", "key", "text"))
    if batch.disqualifications:
        columns = _columns(batch.disqualifications, "event_id", "lead_id", "occurred_at", "reason")
        await conn.execute(_INSERT_DISQUALIFICATIONS, *columns)
    if batch.revenue:
        columns = _columns(batch.revenue, "revenue_id", "lead_id", "amount", "currency", "kind", "occurred_at")
        await conn.execute(_INSERT_REVENUE, *columns)
    if batch.campaign:
        columns = _columns(batch.campaign, "event_id", "occurred_at", "campaign_id", "channel", "impressions",
                           "clicks", "spend", "currency")  # fmt: skip
        await conn.execute(_INSERT_CAMPAIGN_FACTS, *columns)
    if batch.page_views or batch.links:
        await write_visitors(conn, batch.page_views, batch.links)
    if batch.events:
        await conn.execute(_BUMP_STATE, batch.events, batch.as_of)


# --- reads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectionState:
    epoch: str
    version: int
    as_of: datetime | None


async def projection_state(conn: asyncpg.Connection) -> ProjectionState:
    row = await conn.fetchrow("SELECT epoch, version, as_of FROM projection_state WHERE id = 1")
    return ProjectionState(str(row["epoch"]), row["version"], row["as_of"])


async def plan_for_these_values(conn: asyncpg.Connection) -> None:
    """Planner settings for the rest of this read transaction (measured in docs/benchmarks-notes.md).

    - Plan each statement for its own values: asyncpg prepares statements, and after five runs
      Postgres may switch to one generic plan for every period; one made for an unknown range
      scanned all campaign facts per bucket of a 90-day timeseries (10 s at 5M facts, 0.4 s
      planned for its values). Planning takes well under a millisecond.
    - No JIT: the row estimates of long periods triggered ~100 ms of compilation per statement,
      saving nothing.
    - Index reads priced as what they are on this small, hot projection, not as disk seeks
      (random_page_cost 4): the planner otherwise hash-joined a month's ~2k lost deals to a
      parallel scan of every lead (30-40 ms) instead of ~2k primary-key lookups (~3 ms)."""
    await conn.execute(
        """SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true),
                  set_config('random_page_cost', '1.1', true)"""
    )


# Every KPI statement takes the same leading parameters, so each uses a prefix of one list:
# $1/$2 the whole period, $3 the bucket starts, $4/$5 the campaign/channel filters,
# $6 the reporting currency, $7 the hours a bucket boundary cuts (campaign facts only),
# $8 now, $9 the handoff SLA (an interval).
# A fact inside [$1, $2) is in bucket width_bucket(time, $3) (1-based): one range scan for
# all buckets, which the planner estimates from its statistics, where a join on each
# bucket's bounds was estimated blind.
_PERIOD = "{0} >= $1 AND {0} < $2"
_BUCKET = "width_bucket({0}, $3::timestamptz[])"


def _lead_filter(attribution: AttributionModel, campaign_param: int = 4) -> str:
    prefix = "first" if attribution == "first_touch" else "last"
    campaign, channel = f"${campaign_param}", f"${campaign_param + 1}"
    return (
        f"({campaign}::text IS NULL OR l.{prefix}_campaign_id = {campaign}) "
        f"AND ({channel}::text IS NULL OR l.{prefix}_channel = {channel})"
    )


def _campaign_filter(alias: str, campaign: str = "campaign_id", channel: str = "channel") -> str:
    return f"($4::text IS NULL OR {alias}.{campaign} = $4) AND ($5::text IS NULL OR {alias}.{channel} = $5)"


def _dimensions(attribution: AttributionModel, by: BreakdownBy | None) -> tuple[str, str]:
    """(the group column for lead-based facts, the one for campaign facts and sessions)."""
    prefix = "first" if attribution == "first_touch" else "last"
    if by == "campaign":
        return f"l.{prefix}_campaign_id", "f.campaign_id"
    if by == "channel":
        return f"l.{prefix}_channel", "f.channel"
    return "NULL::text", "NULL::text"


# A deal's values as of a moment: its latest change of that kind before it (ties by event id).
def _deal_value(kind: str, before: str | None = None) -> str:
    when = f" AND v.at < {before}" if before else ""
    return f"""(SELECT v.amount, v.currency, v.expected_close_date, v.probability FROM deal_values v
                WHERE v.deal_id = d.deal_id AND v.kind = '{kind}'{when}
                ORDER BY v.at DESC, v.event_id DESC LIMIT 1)"""


# The end of bucket i (1-based): the next one's start, or the period's end.
_BUCKET_END = "coalesce(($3::timestamptz[])[{0} + 1], $2)"


def _kpi_queries(attribution: AttributionModel, by: BreakdownBy | None) -> dict[str, str]:
    lead_dim, campaign_dim = _dimensions(attribution, by)
    session_dim = campaign_dim.replace("f.", "s.")
    lead_filter = _lead_filter(attribution)
    cycle_days = "extract(epoch FROM d.won_at - l.created_at) / 86400"
    return {
        # Whole hours from the hourly rollup, the facts of the hours a boundary cuts ($7) one
        # by one: a rollup hour outside $7 lies whole inside one bucket. Facts without a
        # currency carry no spend (handlers), so `currency = $6` sums what the raw facts'
        # `currency IS NULL OR currency = $6` did.
        "campaign": f"""
            WITH facts AS (
                SELECT h.hour AS at, h.campaign_id, h.channel, h.impressions, h.clicks, h.spend, h.currency
                FROM campaign_hourly h
                WHERE {_PERIOD.format("h.hour")} AND h.hour <> ALL ($7::timestamptz[]) AND {_campaign_filter("h")}
                UNION ALL
                SELECT c.occurred_at, c.campaign_id, c.channel, c.impressions, c.clicks, c.spend,
                       coalesce(c.currency, '')
                FROM unnest($7::timestamptz[]) AS cut(hour)
                JOIN campaign_facts c ON c.occurred_at >= cut.hour AND c.occurred_at < cut.hour + interval '1 hour'
                WHERE {_PERIOD.format("c.occurred_at")} AND {_campaign_filter("c")}
            )
            SELECT {_BUCKET.format("f.at")} AS i, {campaign_dim} AS dim,
                   sum(f.impressions)::bigint AS impressions, sum(f.clicks)::bigint AS clicks,
                   coalesce(sum(f.spend) FILTER (WHERE f.currency = $6), 0) AS spend
            FROM facts f
            GROUP BY 1, 2""",
        # Page views by their own time and their session's campaign/channel: whole hours from
        # the hourly rollup, the hours a boundary cuts page view by page view (as above).
        "page_views": f"""
            WITH facts AS (
                SELECT h.hour AS at, h.campaign_id, h.channel, h.page_views
                FROM page_view_hourly h
                WHERE {_PERIOD.format("h.hour")} AND h.hour <> ALL ($7::timestamptz[]) AND {_campaign_filter("h")}
                UNION ALL
                SELECT p.occurred_at, p.session_campaign_id, p.session_channel, 1
                FROM unnest($7::timestamptz[]) AS cut(hour)
                JOIN page_views p ON p.occurred_at >= cut.hour AND p.occurred_at < cut.hour + interval '1 hour'
                WHERE {_PERIOD.format("p.occurred_at")}
                  AND {_campaign_filter("p", "session_campaign_id", "session_channel")}
            )
            SELECT {_BUCKET.format("f.at")} AS i, {campaign_dim} AS dim, sum(f.page_views)::bigint AS page_views
            FROM facts f
            GROUP BY 1, 2""",
        # Sessions that start in the bucket, and the distinct persons they are: a visitor no
        # lead is known for is one person, a linked one is each of its leads (however many
        # devices a lead has). Those persons that are leads created in the bucket became leads.
        "visitors": f"""
            WITH s AS MATERIALIZED (
                SELECT {_BUCKET.format("s.started_at")} AS i, {session_dim} AS dim, s.visitor, s.linked,
                       count(*) AS sessions
                FROM sessions s
                WHERE {_PERIOD.format("s.started_at")} AND {_campaign_filter("s")}
                GROUP BY 1, 2, 3, 4
            ), persons AS (
                SELECT i, dim, sum(sessions) AS sessions, count(*) FILTER (WHERE NOT linked) AS visitors,
                       0 AS visitors_who_became_leads
                FROM s GROUP BY 1, 2
                UNION ALL
                SELECT s.i, s.dim, 0, count(DISTINCT vl.lead_id),
                       count(DISTINCT vl.lead_id) FILTER (
                           WHERE {_PERIOD.format("l.created_at")} AND {_BUCKET.format("l.created_at")} = s.i)
                FROM s JOIN visitor_leads vl USING (visitor) LEFT JOIN leads l USING (lead_id)
                WHERE s.linked
                GROUP BY 1, 2
            )
            SELECT i, dim, sum(sessions)::bigint AS sessions, sum(visitors)::bigint AS visitors,
                   sum(visitors_who_became_leads)::bigint AS visitors_who_became_leads
            FROM persons GROUP BY 1, 2""",
        # The cohort of leads created in the bucket, and how far each has got by now.
        "cohort": f"""
            SELECT {_BUCKET.format("l.created_at")} AS i, {lead_dim} AS dim, count(*) AS leads,
                   count(*) FILTER (WHERE l.stage_rank >= 1 OR l.has_deal) AS mql,
                   count(*) FILTER (WHERE l.stage_rank >= 2 OR l.has_deal) AS sql,
                   count(*) FILTER (WHERE l.opportunity) AS opportunity,
                   count(*) FILTER (WHERE l.first_won_at IS NOT NULL) AS customer
            FROM leads l
            WHERE {_PERIOD.format("l.created_at")} AND {lead_filter}
            GROUP BY 1, 2""",
        # Leads whose first arrival at a stage is in the bucket (customers: `new_customers`).
        "stage_reached": f"""
            SELECT i, dim, sum(mql)::bigint AS reached_mql, sum(sql)::bigint AS reached_sql,
                   sum(opportunity)::bigint AS reached_opportunity
            FROM (
                SELECT {_BUCKET.format("l.mql_at")} AS i, {lead_dim} AS dim, count(*) AS mql, 0 AS sql, 0 AS opportunity
                FROM leads l WHERE {_PERIOD.format("l.mql_at")} AND {lead_filter} GROUP BY 1, 2
                UNION ALL
                SELECT {_BUCKET.format("l.sql_at")}, {lead_dim}, 0, count(*), 0
                FROM leads l WHERE {_PERIOD.format("l.sql_at")} AND {lead_filter} GROUP BY 1, 2
                UNION ALL
                SELECT {_BUCKET.format("l.opportunity_at")}, {lead_dim}, 0, 0, count(*)
                FROM leads l WHERE {_PERIOD.format("l.opportunity_at")} AND {lead_filter} GROUP BY 1, 2
            ) reached
            GROUP BY 1, 2""",
        # Deals created in the bucket: the handoffs among them and how sales answered (as of
        # $8), and the pipeline they created (amounts as known now; rejected ones never were).
        "created": f"""
            SELECT {_BUCKET.format("d.created_at")} AS i, {lead_dim} AS dim,
                   count(*) FILTER (WHERE d.handoff) AS handoffs,
                   count(*) FILTER (WHERE d.handoff AND r.at IS NOT NULL AND d.rejected_at IS NULL) AS accepted,
                   count(*) FILTER (WHERE d.handoff AND d.rejected_at IS NOT NULL) AS rejected,
                   count(*) FILTER (WHERE d.handoff AND r.at <= d.created_at + $9::interval) AS responded_within_sla,
                   count(*) FILTER (WHERE d.handoff AND (r.at > d.created_at + $9::interval
                                    OR (r.at IS NULL AND $8::timestamptz > d.created_at + $9::interval))) AS breached,
                   count(*) FILTER (WHERE d.handoff AND r.at IS NULL) AS pending,
                   count(*) FILTER (WHERE d.handoff AND r.at IS NULL AND $8::timestamptz > d.created_at + $9::interval)
                       AS pending_overdue,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.at - d.created_at) / 3600)
                       FILTER (WHERE d.handoff AND r.at IS NOT NULL) AS response_hours_median,
                   coalesce(sum(v.amount) FILTER (WHERE d.rejected_at IS NULL AND v.currency = $6), 0)
                       AS pipeline_created
            FROM deals d JOIN leads l USING (lead_id)
            -- Sales answers a handoff by accepting or rejecting it; working it (a win, a loss) accepts it.
            CROSS JOIN LATERAL (SELECT least(d.accepted_at, d.rejected_at, d.won_at, d.lost_at) AS at) r
            LEFT JOIN LATERAL {_deal_value("details")} v ON true
            WHERE {_PERIOD.format("d.created_at")} AND {lead_filter}
            GROUP BY 1, 2""",
        # The deals open at the end of each bucket (or now, for a bucket that has not ended),
        # valued as they were then.
        "pipeline": f"""
            WITH ends AS (
                SELECT b.i, least({_BUCKET_END.format("b.i")}, $8::timestamptz) AS t
                FROM generate_subscripts($3::timestamptz[], 1) AS b(i)
                WHERE ($3::timestamptz[])[b.i] < {_BUCKET_END.format("b.i")}
            )
            SELECT e.i, {lead_dim} AS dim, count(*) AS open_deals,
                   coalesce(sum(v.amount) FILTER (WHERE v.currency = $6), 0) AS open_value,
                   coalesce(sum(v.amount * p.probability) FILTER (WHERE v.currency = $6), 0) AS weighted_value
            FROM ends e
            JOIN deals d ON d.open_during @> e.t
            JOIN leads l USING (lead_id)
            LEFT JOIN LATERAL {_deal_value("details", "e.t")} v ON true
            LEFT JOIN LATERAL {_deal_value("stage", "e.t")} p ON true
            WHERE {lead_filter}
            GROUP BY 1, 2""",
        # The weighted value of the deals open now that are expected to close in what is left
        # of a bucket: a close date counts in the bucket its day starts in, from today on.
        "forecast": f"""
            WITH open_now AS (
                SELECT {lead_dim} AS dim, v.amount * p.probability AS weighted,
                       v.expected_close_date::timestamp AT TIME ZONE 'UTC' AS closes
                FROM deals d
                JOIN leads l USING (lead_id)
                JOIN LATERAL {_deal_value("details", "$8::timestamptz")} v ON true
                JOIN LATERAL {_deal_value("stage", "$8::timestamptz")} p ON true
                WHERE d.open_during @> $8::timestamptz AND v.currency = $6
                  AND v.expected_close_date >= ($8::timestamptz AT TIME ZONE 'UTC')::date AND {lead_filter}
            )
            SELECT {_BUCKET.format("closes")} AS i, dim, coalesce(sum(weighted), 0) AS forecast_open
            FROM open_now
            WHERE {_PERIOD.format("closes")} AND {_BUCKET_END.format(_BUCKET.format("closes"))} > $8::timestamptz
            GROUP BY 1, 2""",
        "won": f"""
            SELECT {_BUCKET.format("d.won_at")} AS i, {lead_dim} AS dim, count(*) AS deals_won,
                   coalesce(sum(d.won_amount) FILTER (WHERE d.currency = $6), 0) AS won_revenue,
                   avg({cycle_days})::float8 AS cycle_average,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY {cycle_days}) AS cycle_median
            FROM deals d JOIN leads l USING (lead_id)
            WHERE {_PERIOD.format("d.won_at")} AND {lead_filter}
            GROUP BY 1, 2""",
        "lost": f"""
            SELECT {_BUCKET.format("d.lost_at")} AS i, {lead_dim} AS dim, count(*) AS deals_lost
            FROM deals d JOIN leads l USING (lead_id)
            WHERE {_PERIOD.format("d.lost_at")} AND {lead_filter}
            GROUP BY 1, 2""",
        "recorded": f"""
            SELECT {_BUCKET.format("r.occurred_at")} AS i, {lead_dim} AS dim, sum(r.amount) AS recorded_revenue
            FROM revenue r JOIN leads l USING (lead_id)
            WHERE {_PERIOD.format("r.occurred_at")} AND r.currency = $6 AND {lead_filter}
            GROUP BY 1, 2""",
        # New customers of the bucket and everything they have paid so far, any date.
        "new_customers": f"""
            SELECT {_BUCKET.format("l.first_won_at")} AS i, {lead_dim} AS dim, count(*) AS new_customers,
                   coalesce(sum(
                       coalesce((SELECT sum(won_amount) FROM deals
                                 WHERE lead_id = l.lead_id AND won_at IS NOT NULL AND currency = $6), 0)
                     + coalesce((SELECT sum(amount) FROM revenue
                                 WHERE lead_id = l.lead_id AND currency = $6), 0)), 0)
                   AS new_customers_lifetime_revenue
            FROM leads l
            WHERE {_PERIOD.format("l.first_won_at")} AND {lead_filter}
            GROUP BY 1, 2""",
    }


def _bind(query: str, args: Sequence[object]) -> tuple[str, list[object]]:
    """The statement with only the leading parameters it uses, renumbered from $1: Postgres
    cannot type a parameter a statement never mentions."""
    used = sorted({int(n) for n in re.findall(r"\$(\d+)", query)})
    number = {old: new for new, old in enumerate(used, start=1)}
    return re.sub(r"\$(\d+)", lambda m: f"${number[int(m[1])]}", query), [args[n - 1] for n in used]


GroupKey = tuple[int, str | None]  # (bucket number from 0, breakdown value or None)


async def kpi_aggregates(
    conn: asyncpg.Connection,
    buckets: Sequence[Period],
    filters: Filters,
    attribution: AttributionModel,
    currency: str,
    by: BreakdownBy | None = None,
    *,
    now: datetime | None = None,
    sla: timedelta = DEFAULT_SLA,
    only: Collection[str] | None = None,
) -> dict[GroupKey, RawAggregates]:
    """Raw counts and sums per (bucket, breakdown value). Groups with no facts are absent.
    `buckets` are consecutive (each starts where the previous one ends); call it inside a
    transaction (see `plan_for_these_values`). `now` decides what is pending, overdue and open
    (default: the clock's now); `sla` is the handoff SLA; `only` names the statements to run
    (default: all)."""
    if any(a.end != b.start for a, b in itertools.pairwise(buckets)):
        raise ValueError("buckets must be consecutive")
    args = (buckets[0].start, buckets[-1].end, [p.start for p in buckets], filters.campaign_id, filters.channel,
            currency, cut_hours(buckets), now or datetime.now(UTC), sla)  # fmt: skip
    await plan_for_these_values(conn)
    groups: dict[GroupKey, RawAggregates] = {}
    for name, query in _kpi_queries(attribution, by).items():
        if only is not None and name not in only:
            continue
        statement, values = _bind(query, args)
        for row in await conn.fetch(statement, *values):
            raw = groups.setdefault((row["i"] - 1, row["dim"]), RawAggregates())
            for column, value in row.items():
                if column == "cycle_average":
                    raw.sales_cycle_average = value
                elif column == "cycle_median":
                    raw.sales_cycle_median = value
                elif column not in ("i", "dim"):
                    setattr(raw, column, value)
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
    # One pass over the lost deals (and their leads) for both counts.
    query = f"""
        WITH lost AS MATERIALIZED (
            SELECT {campaign} AS campaign_id, d.deal_id, d.lost_reason, d.objections
            FROM deals d JOIN leads l USING (lead_id)
            WHERE d.lost_at >= $1 AND d.lost_at < $2 AND {_lead_filter(attribution, campaign_param=3)}
        )
        SELECT true AS is_reason, campaign_id, lost_reason AS value, count(*) AS n FROM lost GROUP BY 2, 3
        UNION ALL
        SELECT false, campaign_id, o.value, count(DISTINCT deal_id)
        FROM lost CROSS JOIN LATERAL unnest(objections) AS o(value) GROUP BY 2, 3"""
    await plan_for_these_values(conn)
    rows = await conn.fetch(query, period.start, period.end, filters.campaign_id, filters.channel)
    reasons = [r for r in rows if r["is_reason"]]
    objections = [r for r in rows if not r["is_reason"]]
    # Every lost deal has exactly one reason row, so the reason counts add up to the deals.
    deals: dict[str | None, int] = defaultdict(int)
    for r in reasons:
        deals[r["campaign_id"]] += r["n"]
    return (
        [FeedbackCount(r["campaign_id"], r["value"] or "", r["n"]) for r in reasons],
        [FeedbackCount(r["campaign_id"], r["value"], r["n"]) for r in objections],
        dict(deals),
    )


@dataclass(frozen=True)
class ObjectionCount:
    outcome: str  # lost | won | open
    key: str
    text: str | None  # None: the key's own count (deals that raised it, whatever the text)
    count: int


async def sales_feedback(
    conn: asyncpg.Connection, period: Period, filters: Filters, attribution: AttributionModel, now: datetime
) -> tuple[list[FeedbackCount], list[FeedbackCount], list[ObjectionCount]]:
    """(rejection reasons of the handoffs rejected in the period, reasons of the leads moved to
    disqualified in it, per campaign; the objections of the deals lost in it, won in it and
    open at its end (or now), by vocabulary key and text). Each counts deals (or moves)."""
    campaign = f"l.{'first' if attribution == 'first_touch' else 'last'}_campaign_id"
    lead_filter = _lead_filter(attribution, campaign_param=3)
    reasons_query = f"""
        SELECT true AS rejection, {campaign} AS campaign_id, d.rejection_reason AS value, count(*) AS n
        FROM deals d JOIN leads l USING (lead_id)
        WHERE d.rejected_at >= $1 AND d.rejected_at < $2 AND {lead_filter}
        GROUP BY 2, 3
        UNION ALL
        SELECT false, {campaign}, q.reason, count(*)
        FROM disqualifications q JOIN leads l USING (lead_id)
        WHERE q.occurred_at >= $1 AND q.occurred_at < $2 AND {lead_filter}
        GROUP BY 2, 3"""
    objections_query = f"""
        WITH chosen AS MATERIALIZED (
            SELECT 'lost' AS outcome, d.deal_id FROM deals d JOIN leads l USING (lead_id)
            WHERE d.lost_at >= $1 AND d.lost_at < $2 AND d.rejected_at IS NULL AND {lead_filter}
            UNION ALL
            SELECT 'won', d.deal_id FROM deals d JOIN leads l USING (lead_id)
            WHERE d.won_at >= $1 AND d.won_at < $2 AND d.rejected_at IS NULL AND {lead_filter}
            UNION ALL
            SELECT 'open', d.deal_id FROM deals d JOIN leads l USING (lead_id)
            WHERE $1 < $2 AND d.open_during @> least($2, $5::timestamptz) AND {lead_filter}
        )
        SELECT c.outcome, o.key, o.text, count(*) AS n
        FROM chosen c JOIN deal_objections o USING (deal_id) GROUP BY 1, 2, 3
        UNION ALL
        SELECT c.outcome, o.key, NULL, count(DISTINCT c.deal_id)
        FROM chosen c JOIN deal_objections o USING (deal_id) GROUP BY 1, 2"""
    await plan_for_these_values(conn)
    args = (period.start, period.end, filters.campaign_id, filters.channel)
    reasons = await conn.fetch(reasons_query, *args)
    objections = await conn.fetch(objections_query, *args, now)
    return (
        [FeedbackCount(r["campaign_id"], r["value"], r["n"]) for r in reasons if r["rejection"]],
        [FeedbackCount(r["campaign_id"], r["value"], r["n"]) for r in reasons if not r["rejection"]],
        [ObjectionCount(r["outcome"], r["key"], r["text"], r["n"]) for r in objections],
    )


# --- shared goals (schema metrics_state: migrations/005_goals.sql) ----------------------

_GOAL_COLUMNS = "goal_id, name, team, metric, target, starts_at, ends_at, campaign_id, channel, created_at, updated_at"


@dataclass(frozen=True)
class GoalSpec:
    """A goal as PUT sets it."""

    name: str
    team: str
    metric: str
    target: Decimal
    starts_at: datetime
    ends_at: datetime
    campaign_id: str | None
    channel: str | None


async def goals_version(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT version FROM metrics_state.goals_version WHERE id = 1")


async def get_goal(conn: asyncpg.Connection, goal_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_GOAL_COLUMNS} FROM metrics_state.goals WHERE goal_id = $1", goal_id)


async def put_goal(conn: asyncpg.Connection, goal_id: uuid.UUID, spec: GoalSpec) -> tuple[asyncpg.Record, bool]:
    """Create or replace; returns (the goal, created). Writing what is already there changes
    nothing (not even updated_at or the version): PUT is idempotent."""
    row = await conn.fetchrow(
        f"""WITH written AS (
                INSERT INTO metrics_state.goals AS g (goal_id, name, team, metric, target, starts_at, ends_at,
                                                      campaign_id, channel)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (goal_id) DO UPDATE SET
                    name = EXCLUDED.name, team = EXCLUDED.team, metric = EXCLUDED.metric, target = EXCLUDED.target,
                    starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, campaign_id = EXCLUDED.campaign_id,
                    channel = EXCLUDED.channel, updated_at = now()
                WHERE (g.name, g.team, g.metric, g.target, g.starts_at, g.ends_at, g.campaign_id, g.channel)
                      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.team, EXCLUDED.metric, EXCLUDED.target,
                                        EXCLUDED.starts_at, EXCLUDED.ends_at, EXCLUDED.campaign_id, EXCLUDED.channel)
                RETURNING {_GOAL_COLUMNS}, xmax = 0 AS created
            ), bumped AS (
                UPDATE metrics_state.goals_version SET version = version + 1
                WHERE id = 1 AND EXISTS (SELECT FROM written)
            )
            SELECT * FROM written""",
        goal_id, spec.name, spec.team, spec.metric, spec.target, spec.starts_at, spec.ends_at, spec.campaign_id,
        spec.channel,
    )  # fmt: skip
    if row is None:  # unchanged
        return await get_goal(conn, goal_id), False
    return row, row["created"]


async def delete_goal(conn: asyncpg.Connection, goal_id: uuid.UUID) -> bool:
    deleted = await conn.fetchval(
        """WITH gone AS (DELETE FROM metrics_state.goals WHERE goal_id = $1 RETURNING goal_id),
                bumped AS (UPDATE metrics_state.goals_version SET version = version + 1
                           WHERE id = 1 AND EXISTS (SELECT FROM gone))
           SELECT count(*) FROM gone""",
        goal_id,
    )
    return bool(deleted)


async def list_goals(
    conn: asyncpg.Connection, active_at: datetime | None, team: str | None,
    after: tuple[datetime, uuid.UUID] | None, limit: int,
) -> list[asyncpg.Record]:  # fmt: skip
    """Oldest first on (created_at, goal_id); `active_at`: goals whose period holds it."""
    return await conn.fetch(
        f"""SELECT {_GOAL_COLUMNS} FROM metrics_state.goals
            WHERE ($1::timestamptz IS NULL OR (starts_at <= $1 AND $1 < ends_at))
              AND ($2::text IS NULL OR team = $2)
              AND ($3::timestamptz IS NULL OR (created_at, goal_id) > ($3, $4::uuid))
            ORDER BY created_at, goal_id LIMIT $5""",
        active_at, team, after[0] if after else None, after[1] if after else None, limit,
    )  # fmt: skip


# --- the handoffs past their SLA (migrations/006_pending_handoffs.sql) ------------------


async def overdue_handoffs(
    conn: asyncpg.Connection, filters: Filters, attribution: AttributionModel, now: datetime, sla: timedelta,
    after: tuple[datetime, uuid.UUID] | None, limit: int,
) -> list[asyncpg.Record]:  # fmt: skip
    """Handoffs not answered (accepted, rejected, won or lost) and created more than `sla`
    before `now`, oldest first on (created_at, deal_id), with their lead's campaign/channel."""
    prefix = "first" if attribution == "first_touch" else "last"
    return await conn.fetch(
        f"""SELECT d.deal_id, d.lead_id, d.created_at, l.{prefix}_campaign_id AS campaign_id,
                   l.{prefix}_channel AS channel
            FROM deals d JOIN leads l USING (lead_id)
            WHERE d.handoff AND d.accepted_at IS NULL AND d.rejected_at IS NULL AND d.won_at IS NULL
              AND d.lost_at IS NULL AND d.created_at < $1::timestamptz - $2::interval
              AND ($3::timestamptz IS NULL OR (d.created_at, d.deal_id) > ($3, $4::uuid))
              AND {_lead_filter(attribution, campaign_param=5)}
            ORDER BY d.created_at, d.deal_id LIMIT $7""",
        now, sla, after[0] if after else None, after[1] if after else None, filters.campaign_id, filters.channel,
        limit,
    )  # fmt: skip
