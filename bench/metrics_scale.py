"""The metrics KPI queries on a year of facts: `python -m bench.metrics_scale [--keep] [--explain]`.

Builds a database of its own (`embudo_bench_metrics_…`) the way an existing deployment
would have it: the first migration, a year of facts bulk-loaded with COPY (50 campaigns over
6 channels, ~5M campaign events — ad platforms may post one per click — 500k leads, 50k
deals, 20k revenue records), then the later migrations on top (timed: they may backfill),
then a year of visits as the projector would have written them (5M page views in 2M
sessions of 1.3M visitors, 70 % of the leads linked to a visitor, some to two).
Then times what each dashboard request runs (`store.kpi_aggregates`, `store.lost_feedback`
in a read-only repeatable-read transaction, as the API does), median of a few runs, with the
time per SQL statement; `--explain` prints EXPLAIN (ANALYZE, BUFFERS) of each statement.
Finally: the projector's write cost per batch of campaign facts, and a check that the
answers equal a plain recount over the raw facts. The database is dropped unless `--keep`.

About a minute, most of it building the data: not part of `make bench`; numbers in docs/benchmarks-notes.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg

from services.metrics import store
from services.metrics.domain import Filters, Period, bucket_periods, kpis, resolve_period
from shared.db import apply_migrations, create_pool

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "services" / "metrics" / "migrations"
ADMIN_DSN = os.environ.get("DATABASE_URL", "postgresql://embudo:embudo@127.0.0.1:5432/postgres")

CHANNELS = ("cpc", "social", "email", "display", "affiliate", "video")
CAMPAIGNS = [(f"campaign-{i:02d}", CHANNELS[i % len(CHANNELS)]) for i in range(50)]
REASONS = ("price", "timing", "competitor", "no decision", "missing feature")
OBJECTIONS = ("too expensive", "no budget", "missing feature", "security review", "contract terms")
CURRENCY = "EUR"


@dataclass(frozen=True)
class Scale:
    days: int = 365
    campaign_facts: int = 5_000_000
    leads: int = 500_000
    deals: int = 50_000
    revenue: int = 20_000
    sessions: int = 2_000_000  # ~2.5 page views each


def _visit_lengths(rng: random.Random) -> int:
    return 1 + min(int(rng.expovariate(1 / 1.5)), 40)


# --- the dataset ------------------------------------------------------------------------


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128))


def _day_weights(days: int, rng: random.Random) -> list[float]:
    """Weekdays busier than weekends, a slow growth over the year, some noise."""
    return [(1.0 if d % 7 < 5 else 0.55) * (0.7 + 0.6 * d / days) * rng.uniform(0.85, 1.15) for d in range(days)]


def _times_in_day(rng: random.Random, day: datetime, n: int) -> list[datetime]:
    """Sorted, busier in the (European) working day: physical order follows time as on a live table."""
    seconds = sorted(
        (rng.triangular(6, 22, 14) if rng.random() < 0.8 else rng.uniform(0, 24)) * 3600 for _ in range(n)
    )  # fmt: skip
    return [day + timedelta(seconds=s) for s in seconds]


async def load_campaign_facts(conn: asyncpg.Connection, rng: random.Random, start: datetime, scale: Scale) -> None:
    # A few big campaigns and a long tail, as ad accounts usually look.
    weights = [1 / (i + 1) ** 0.8 for i in range(len(CAMPAIGNS))]
    picks = rng.choices(CAMPAIGNS, weights, k=65_536)
    day_weights = _day_weights(scale.days, rng)
    total_weight = sum(day_weights)
    columns = ("event_id", "occurred_at", "campaign_id", "channel", "impressions", "clicks", "spend", "currency")
    rows: list[tuple] = []
    for d, weight in enumerate(day_weights):
        count = round(scale.campaign_facts * weight / total_weight)
        for moment in _times_in_day(rng, start + timedelta(days=d), count):
            campaign_id, channel = picks[rng.getrandbits(16)]
            kind = rng.random()
            if kind < 0.85:  # one event per click
                row = (_uuid(rng), moment, campaign_id, channel, 0, 1, Decimal(0), None)
            elif kind < 0.97:  # impressions come in batches
                row = (_uuid(rng), moment, campaign_id, channel, rng.randint(50, 5000), 0, Decimal(0), None)
            else:  # spend reports; a few in a currency the KPIs leave out
                currency = CURRENCY if rng.random() < 0.98 else "USD"
                row = (_uuid(rng), moment, campaign_id, channel, 0, 0, Decimal(rng.randint(50, 50_000)) / 100, currency)
            rows.append(row)
        if len(rows) >= 200_000:
            await conn.copy_records_to_table("campaign_facts", records=rows, columns=columns)
            rows.clear()
    if rows:
        await conn.copy_records_to_table("campaign_facts", records=rows, columns=columns)


async def load_funnel(conn: asyncpg.Connection, rng: random.Random, start: datetime, end: datetime,
                      scale: Scale) -> None:  # fmt: skip
    weights = [1 / (i + 1) ** 0.8 for i in range(len(CAMPAIGNS))]
    day_weights = _day_weights(scale.days, rng)
    total_weight = sum(day_weights)
    leads: list[list] = []
    for d, weight in enumerate(day_weights):
        for created in _times_in_day(rng, start + timedelta(days=d), round(scale.leads * weight / total_weight)):
            first = rng.choices(CAMPAIGNS, weights)[0] if rng.random() < 0.9 else (None, None)
            last = first if rng.random() < 0.7 else (rng.choices(CAMPAIGNS, weights)[0] if rng.random() < 0.9 else
                                                     (None, None))  # fmt: skip
            last_at = created if last == first else min(created + timedelta(days=rng.expovariate(1 / 20)), end)
            stage = rng.choices((0, 1, 2), (60, 25, 15))[0]
            leads.append([_uuid(rng), created, first[0], first[1], created, last[0], last[1], last_at, stage,
                          False, None])  # fmt: skip
    # Deals: on ~9% of the leads (a few get two), won 30%, lost 40%, the rest still open.
    deals, revenue = [], []
    with_deal = rng.sample(range(len(leads)), int(scale.deals * 0.9))
    owners = with_deal + rng.sample(with_deal, scale.deals - len(with_deal))
    for i in owners:
        lead = leads[i]
        lead[8], lead[9] = 2, True
        opened = lead[1] + timedelta(days=rng.expovariate(1 / 10))
        won_at = lost_at = amount = currency = reason = None
        objections: list[str] = []
        outcome = rng.random()
        closed = opened + timedelta(days=rng.expovariate(1 / 30))
        if closed < end and outcome < 0.3:
            won_at, amount, currency = closed, Decimal(rng.randint(50_000, 5_000_000)) / 100, CURRENCY
            lead[10] = won_at if lead[10] is None else min(lead[10], won_at)
        elif closed < end and outcome < 0.7:
            lost_at, reason = closed, rng.choice(REASONS)
            objections = rng.sample(OBJECTIONS, rng.randint(0, 2))
        if opened < end:
            deals.append((_uuid(rng), lead[0], opened, won_at, amount, currency, lost_at, reason, objections))
    customers = [lead for lead in leads if lead[10] is not None]
    for _ in range(scale.revenue):
        lead = rng.choice(customers)
        occurred = lead[10] + (end - lead[10]) * rng.random()
        revenue.append((_uuid(rng), lead[0], Decimal(rng.randint(10_000, 500_000)) / 100, CURRENCY,
                        rng.choice(("renewal", "upsell")), occurred))  # fmt: skip
    await conn.copy_records_to_table("leads", records=[tuple(lead) for lead in leads], columns=(
        "lead_id", "created_at", "first_campaign_id", "first_channel", "first_touch_at", "last_campaign_id",
        "last_channel", "last_touch_at", "stage_rank", "has_deal", "first_won_at"))  # fmt: skip
    await conn.copy_records_to_table("deals", records=deals, columns=(
        "deal_id", "lead_id", "created_at", "won_at", "won_amount", "currency", "lost_at", "lost_reason",
        "objections"))  # fmt: skip
    await conn.copy_records_to_table("revenue", records=revenue, columns=(
        "revenue_id", "lead_id", "amount", "currency", "kind", "occurred_at"))  # fmt: skip


async def load_visits(conn: asyncpg.Connection, rng: random.Random, start: datetime, scale: Scale) -> None:
    """Sessions as the projector splits them: a returning visitor comes back 30 minutes or more
    after its last page view; 45 % of sessions land with a campaign's UTM, the other page views
    carry none. Then links: 70 % of the leads to a visitor of their creation day, 10 % to a
    second one (another device), and the sessions of linked visitors marked as such."""
    weights = [1 / (i + 1) ** 0.8 for i in range(len(CAMPAIGNS))]
    day_weights = _day_weights(scale.days, rng)
    total_weight = sum(day_weights)
    last_seen: list[datetime] = []  # per visitor number - 1: its latest page view
    by_day: list[list[int]] = []
    views, sessions = [], []
    view_columns = ("visitor", "occurred_at", "event_id", "campaign_id", "channel", "session_campaign_id",
                    "session_channel")  # fmt: skip
    session_columns = ("visitor", "started_at", "event_id", "campaign_id", "channel", "linked")
    for d, weight in enumerate(day_weights):
        today: list[int] = []
        for moment in _times_in_day(rng, start + timedelta(days=d), round(scale.sessions * weight / total_weight)):
            visitor = rng.randrange(len(last_seen)) + 1 if last_seen and rng.random() < 0.35 else 0
            if not visitor or moment - last_seen[visitor - 1] < timedelta(minutes=31):
                last_seen.append(moment)
                visitor = len(last_seen)
            today.append(visitor)
            campaign_id, channel = rng.choices(CAMPAIGNS, weights)[0] if rng.random() < 0.45 else (None, None)
            landing = _uuid(rng)
            sessions.append((visitor, moment, landing, campaign_id, channel, False))
            views.append((visitor, moment, landing, campaign_id, channel, campaign_id, channel))
            for _ in range(_visit_lengths(rng) - 1):
                moment += timedelta(seconds=rng.uniform(10, 600))
                views.append((visitor, moment, _uuid(rng), None, None, campaign_id, channel))
            last_seen[visitor - 1] = moment
        by_day.append(today)
        if len(views) >= 200_000:
            await conn.copy_records_to_table("page_views", records=views, columns=view_columns)
            await conn.copy_records_to_table("sessions", records=sessions, columns=session_columns)
            views.clear()
            sessions.clear()
    await conn.copy_records_to_table("page_views", records=views, columns=view_columns)
    await conn.copy_records_to_table("sessions", records=sessions, columns=session_columns)
    await conn.copy_records_to_table("visitors", columns=("anonymous_id", "visitor"),
                                     records=((str(_uuid(rng)), n) for n in range(1, len(last_seen) + 1)))  # fmt: skip
    await conn.execute("SELECT setval(pg_get_serial_sequence('visitors', 'visitor'), max(visitor)) FROM visitors")
    links = []
    for lead_id, created_at in await conn.fetch("SELECT lead_id, created_at FROM leads"):
        day = min(max((created_at - start).days, 0), len(by_day) - 1)
        if by_day[day] and rng.random() < 0.7:
            links.append((rng.choice(by_day[day]), lead_id))
            if rng.random() < 0.1:
                links.append((rng.randrange(len(last_seen)) + 1, lead_id))
    await conn.copy_records_to_table("visitor_leads", records=set(links), columns=("visitor", "lead_id"))
    await conn.execute("""
        UPDATE visitors SET linked = true WHERE visitor IN (SELECT visitor FROM visitor_leads);
        UPDATE sessions SET linked = true WHERE visitor IN (SELECT visitor FROM visitor_leads);
        INSERT INTO page_view_hourly (hour, campaign_id, channel, page_views)
        SELECT date_trunc('hour', occurred_at, 'UTC'), session_campaign_id, session_channel, count(*)
        FROM page_views GROUP BY 1, 2, 3""")


async def build(pool: asyncpg.Pool, end: datetime, scale: Scale, seed: int) -> dict[str, float]:
    """First migration, bulk load, then the rest of the migrations (as on an existing database)."""
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "metrics" / "migrations"  # same migration names as the real folder
        first.mkdir(parents=True)
        shutil.copy(MIGRATIONS / "001_init.sql", first)
        await apply_migrations(pool, first)
    rng = random.Random(seed)
    start = end - timedelta(days=scale.days)
    async with pool.acquire() as conn:
        began = time.perf_counter()
        await load_campaign_facts(conn, rng, start, scale)
        await load_funnel(conn, rng, start, end, scale)
        timings["load"] = time.perf_counter() - began
        began = time.perf_counter()
        applied = await apply_migrations(pool, MIGRATIONS)
        timings["migrations"] = time.perf_counter() - began
        print(f"  migrations applied after the load: {applied or 'none'} ({timings['migrations']:.1f} s)")
        began = time.perf_counter()
        await load_visits(conn, rng, start, scale)
        timings["visits"] = time.perf_counter() - began
        began = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")  # what autovacuum would have done on a live database
        timings["vacuum"] = time.perf_counter() - began
    return timings


# --- the questions dashboards ask -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    period: Period
    interval: str | None = None  # timeseries
    by: str | None = None  # breakdown
    filters: Filters = Filters()
    attribution: str = "first_touch"
    feedback: bool = False


def cases(now: datetime) -> list[Case]:
    default = resolve_period(None, None, now)  # 30 days up to the end of today
    year = Period(default.end - timedelta(days=365), default.end)
    quarter = Period(default.end - timedelta(days=90), default.end)
    # Edges inside an hour, as "the last 30 days" asked at some moment of the day would have.
    odd = Period(default.start - timedelta(hours=5, minutes=17, seconds=3), default.end - timedelta(minutes=42))
    big = Filters(campaign_id=CAMPAIGNS[0][0])
    small = Filters(campaign_id=CAMPAIGNS[37][0])
    cpc = Filters(channel="cpc")
    return [
        Case("kpis 30d", default),
        Case("kpis 30d campaign (biggest)", default, filters=big),
        Case("kpis 30d campaign (small)", default, filters=small),
        Case("kpis 30d channel", default, filters=cpc),
        Case("kpis 30d campaign last_touch", default, filters=big, attribution="last_touch"),
        Case("kpis 30d, edges not on the hour", odd),
        Case("kpis 365d", year),
        Case("kpis 365d campaign", year, filters=big),
        Case("kpis 365d channel", year, filters=cpc),
        Case("timeseries day 30d", default, interval="day"),
        Case("timeseries day 90d", quarter, interval="day"),
        Case("timeseries day 90d campaign", quarter, interval="day", filters=big),
        Case("timeseries week 365d", year, interval="week"),
        Case("timeseries month 365d", year, interval="month"),
        Case("breakdown campaign 30d", default, by="campaign"),
        Case("breakdown channel 30d", default, by="channel"),
        Case("breakdown campaign 90d", quarter, by="campaign"),
        Case("breakdown channel 90d", quarter, by="channel"),
        Case("breakdown campaign 365d", year, by="campaign"),
        Case("feedback 30d", default, feedback=True),
        Case("feedback 365d", year, feedback=True),
    ]


class TimedConnection:
    """Passes fetches through to asyncpg, noting each statement's time (and its plan)."""

    def __init__(self, conn: asyncpg.Connection, explain: bool) -> None:
        self.conn, self.explain = conn, explain
        self.statements: list[tuple[str, float]] = []
        self.plans: list[str] = []

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        began = time.perf_counter()
        rows = await self.conn.fetch(query, *args)
        self.statements.append((_label(query), time.perf_counter() - began))
        if self.explain:
            plan = await self.conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
            self.plans.append(f"-- {_label(query)}\n" + "\n".join(r[0] for r in plan))
        return rows

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


# A name for each statement, from a phrase only it contains (the first that matches).
_LABELS = (("page_view_hourly", "page_views"), ("visitors_who_became_leads", "visitors"), ("impressions", "campaign"),
           ("count(*) AS leads", "cohort"), ("deals_won", "won"), ("deals_lost", "lost"),
           ("recorded_revenue", "recorded"), ("new_customers", "new_customers"), ("is_reason", "feedback"),
           ("lost_reason AS value", "reasons"), ("unnest(d.objections)", "objections"))  # fmt: skip


def _label(query: str) -> str:
    return next((label for phrase, label in _LABELS if phrase in query), query.split()[0])


async def run_case(conn: asyncpg.Connection, case: Case, explain: bool = False) -> tuple[object, TimedConnection]:
    timed = TimedConnection(conn, explain)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if case.feedback:
            reasons, objections, lost = await store.lost_feedback(timed, case.period, case.filters, case.attribution)
            answer: object = [sorted(map(repr, part)) for part in (reasons, objections, lost.items())]
        else:
            buckets = bucket_periods(case.period, case.interval, 400) if case.interval else [case.period]
            groups = await store.kpi_aggregates(timed, buckets, case.filters, case.attribution, CURRENCY, by=case.by)
            answer = sorted(((k[0], k[1] or ""), kpis(v)) for k, v in groups.items())
    return answer, timed


def digest(answer: object) -> str:
    return hashlib.sha256(json.dumps(answer, default=str, sort_keys=True).encode()).hexdigest()[:16]


async def time_cases(pool: asyncpg.Pool, now: datetime, runs: int, explain: bool) -> list[dict]:
    results = []
    async with pool.acquire() as conn:
        for case in cases(now):
            await run_case(conn, case)  # warm the cache
            totals, per_statement = [], []
            for _ in range(runs):
                began = time.perf_counter()
                answer, timed = await run_case(conn, case)
                totals.append(time.perf_counter() - began)
                per_statement.append(timed.statements)
            statements = {
                label: statistics.median(run[i][1] for run in per_statement) * 1000
                for i, (label, _) in enumerate(per_statement[0])
            }
            result = {"case": case.name, "ms": statistics.median(totals) * 1000, "statements": statements,
                      "digest": digest(answer)}  # fmt: skip
            results.append(result)
            detail = ", ".join(f"{k} {v:.0f}" for k, v in statements.items())
            print(f"  {case.name:<34} {result['ms']:8.1f} ms   ({detail})  {result['digest']}")
            if explain:
                _, timed = await run_case(conn, case, explain=True)
                print("\n".join(timed.plans), "\n")
    return results


# --- the write side and a recount --------------------------------------------------------


async def write_cost(pool: asyncpg.Pool, now: datetime, batches: int = 40, size: int = 500) -> float:
    """Campaign facts/s through `store.write_batch`, one transaction per batch as the consumer does
    (rolled back, so runs on a kept database keep answering the same)."""
    rng = random.Random(7)
    elapsed = 0.0
    for _ in range(batches):
        batch = store.ProjectionBatch()
        for _ in range(size):
            campaign_id, channel = rng.choice(CAMPAIGNS)
            moment = now - timedelta(seconds=rng.uniform(0, 3600))
            batch.campaign.append(store.CampaignFacts(uuid.uuid4(), moment, campaign_id, channel, 0, 1, Decimal(0),
                                                      None))  # fmt: skip
            batch.applied(moment)
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            began = time.perf_counter()
            await store.write_batch(conn, batch)
            elapsed += time.perf_counter() - began
            await transaction.rollback()
    return batches * size / elapsed


_RAW_CAMPAIGN = """
SELECT campaign_id, sum(impressions)::bigint AS impressions, sum(clicks)::bigint AS clicks,
       coalesce(sum(spend) FILTER (WHERE currency IS NULL OR currency = $3), 0) AS spend
FROM campaign_facts WHERE occurred_at >= $1 AND occurred_at < $2 GROUP BY 1"""


async def recount(pool: asyncpg.Pool, now: datetime, samples: int = 6) -> None:
    """Random periods with edges anywhere: the served campaign numbers equal a scan of the raw facts."""
    rng = random.Random(11)
    async with pool.acquire() as conn:
        for _ in range(samples):
            start = now - timedelta(seconds=rng.uniform(0, 300 * 86400))
            end = start + timedelta(seconds=rng.uniform(1, 60 * 86400))
            groups = await store.kpi_aggregates(conn, [Period(start, end)], Filters(), "first_touch", CURRENCY,
                                                by="campaign")  # fmt: skip
            raw = {r["campaign_id"]: r for r in await conn.fetch(_RAW_CAMPAIGN, start, end, CURRENCY)}
            for campaign_id, row in raw.items():
                served = groups[(0, campaign_id)]
                got = (served.impressions, served.clicks, served.spend)
                if got != (row["impressions"], row["clicks"], row["spend"]):
                    raise AssertionError(f"{campaign_id} {start}..{end}: served {got}, raw {tuple(row.values())}")
    print(f"  recount: {samples} random periods, campaign numbers equal the raw facts")


_RAW_VISITS = """
WITH s AS (SELECT * FROM sessions WHERE started_at >= $1 AND started_at < $2)
SELECT (SELECT count(*) FROM page_views WHERE occurred_at >= $1 AND occurred_at < $2) AS page_views,
       (SELECT count(*) FROM s) AS sessions,
       (SELECT count(DISTINCT coalesce('lead ' || vl.lead_id, 'visitor ' || s.visitor))
        FROM s LEFT JOIN visitor_leads vl USING (visitor)) AS visitors,
       (SELECT count(DISTINCT l.lead_id) FROM s JOIN visitor_leads vl USING (visitor) JOIN leads l USING (lead_id)
        WHERE l.created_at >= $1 AND l.created_at < $2) AS visitors_who_became_leads"""


async def recount_visits(pool: asyncpg.Pool, now: datetime, samples: int = 4) -> None:
    """Random periods: the served page views (rollup + cut hours), sessions and visitors equal
    a plain count over the page views, sessions and links."""
    rng = random.Random(13)
    async with pool.acquire() as conn:
        for _ in range(samples):
            start = now - timedelta(seconds=rng.uniform(0, 300 * 86400))
            end = start + timedelta(seconds=rng.uniform(1, 30 * 86400))
            raw = await conn.fetchrow(_RAW_VISITS, start, end)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                groups = await store.kpi_aggregates(conn, [Period(start, end)], Filters(), "first_touch", CURRENCY)
            served = groups.get((0, None))
            got = tuple(getattr(served, name, 0) for name in raw.keys())
            if got != tuple(raw.values()):
                raise AssertionError(f"{start}..{end}: served {got}, raw {tuple(raw.values())}")
    print(f"  recount: {samples} random periods, page views, sessions and visitors equal a plain count")


# The alternative to keeping sessions: split the period's page views at query time (with the
# rules of _SESSIONIZE, a look-back of a day for the sessions the period's start cuts) and
# count sessions and visitors. Timed for comparison only.
_SESSIONS_AT_QUERY_TIME = """
WITH v AS (
    SELECT visitor, occurred_at, event_id, campaign_id,
           CASE WHEN lag(occurred_at) OVER w IS NULL OR occurred_at - lag(occurred_at) OVER w >= interval '30 minutes'
                THEN 1 ELSE 0 END AS visit_starts
    FROM page_views WHERE occurred_at >= $1::timestamptz - interval '1 day' AND occurred_at < $2
    WINDOW w AS (PARTITION BY visitor ORDER BY occurred_at, event_id)
), g AS (
    SELECT *, sum(visit_starts) OVER (PARTITION BY visitor ORDER BY occurred_at, event_id) AS visit FROM v
), c AS (
    SELECT *, count(campaign_id) OVER (PARTITION BY visitor, visit ORDER BY occurred_at, event_id) AS n FROM g
), l AS (
    SELECT *, max(campaign_id) OVER (PARTITION BY visitor, visit, n) AS latest FROM c
), s AS (
    SELECT *, visit_starts = 1 OR (campaign_id IS NOT NULL AND campaign_id IS DISTINCT FROM
              lag(latest) OVER (PARTITION BY visitor, visit ORDER BY occurred_at, event_id)) AS starts
    FROM l
)
SELECT count(*) AS sessions, count(DISTINCT visitor) AS visitors FROM s WHERE starts AND occurred_at >= $1"""


async def sessions_at_query_time(pool: asyncpg.Pool, now: datetime, runs: int = 3) -> float:
    period = resolve_period(None, None, now)
    async with pool.acquire() as conn:
        await conn.fetch(_SESSIONS_AT_QUERY_TIME, period.start, period.end)
        timings = []
        for _ in range(runs):
            began = time.perf_counter()
            await conn.fetch(_SESSIONS_AT_QUERY_TIME, period.start, period.end)
            timings.append(time.perf_counter() - began)
    return statistics.median(timings) * 1000


async def page_view_write_cost(pool: asyncpg.Pool, now: datetime, batches: int = 40, size: int = 500,
                               late: timedelta = timedelta(0)) -> float:  # fmt: skip
    """Page views/s through `store.write_batch` (rolled back): a third from visitors seen before,
    the rest new ones; `late`: that long before now (re-splitting the returning visitors' later
    page views)."""
    rng = random.Random(17)
    known = [r["anonymous_id"] for r in await pool.fetch("SELECT anonymous_id FROM visitors TABLESAMPLE SYSTEM (1)")]
    elapsed = 0.0
    for _ in range(batches):
        batch = store.ProjectionBatch()
        for _ in range(size):
            anonymous_id = rng.choice(known) if rng.random() < 0.33 else str(uuid.uuid4())
            campaign_id, channel = rng.choice(CAMPAIGNS) if rng.random() < 0.3 else (None, None)
            moment = now - late - timedelta(seconds=rng.uniform(0, 60))
            batch.page_views.append(store.PageViewFacts(uuid.uuid4(), anonymous_id, moment, campaign_id, channel))
            batch.applied(moment)
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            began = time.perf_counter()
            await store.write_batch(conn, batch)
            elapsed += time.perf_counter() - began
            await transaction.rollback()
    return batches * size / elapsed


# --- main ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    end = resolve_period(None, None, now).end
    admin = await asyncpg.connect(ADMIN_DSN)
    name = args.database or f"embudo_bench_metrics_{uuid.uuid4().hex[:8]}"
    if not args.database:
        await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    pool = await create_pool(dsn, max_size=2)
    try:
        if args.database:
            print(f"reusing {name}")
            applied = await apply_migrations(pool, MIGRATIONS)
            print(f"  migrations applied now: {applied or 'none'}")
            if applied:
                await pool.execute("VACUUM ANALYZE")
        else:
            print(f"building {name}")
            full = Scale()
            scale = Scale(full.days, *(round(n * args.fraction) for n in astuple(full)[1:]))
            timings = await build(pool, min(end, now), scale, args.seed)
            print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        sizes = await pool.fetch(
            """SELECT relname, reltuples::bigint AS n, pg_size_pretty(pg_total_relation_size(oid)) AS size
               FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
               ORDER BY pg_total_relation_size(oid) DESC LIMIT 5"""
        )
        print("  " + ", ".join(f"{r['relname']} ~{r['n']:,} rows {r['size']}" for r in sizes))
        results = await time_cases(pool, now, args.runs, args.explain)
        if args.results:
            await asyncio.to_thread(Path(args.results).write_text, json.dumps(results, indent=1))
        print(f"  projector: {await write_cost(pool, now):,.0f} campaign facts/s through write_batch")
        print(f"  sessions split at query time instead, 30 days: {await sessions_at_query_time(pool, now):,.0f} ms")
        print(f"  projector: {await page_view_write_cost(pool, now):,.0f} page views/s through write_batch")
        late = await page_view_write_cost(pool, now, late=timedelta(days=30))
        print(f"  projector: {late:,.0f} page views/s, 30 days late")
        await recount(pool, now)
        await recount_visits(pool, now)
    finally:
        await pool.close()
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept {name}")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the database (reuse it with --database)")
    parser.add_argument("--database", help="an existing bench database: skip the load, apply new migrations")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) per statement")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=1.0, help="of the data set's sizes, for a quick try")
    parser.add_argument("--results", help="write the timings and answer digests to this JSON file")
    asyncio.run(main(parser.parse_args()))
