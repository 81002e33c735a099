"""Campaign KPIs come from the hourly rollup plus the raw facts of the hours a boundary cuts:
whatever the period's edges, the buckets, the filters and the replays, the answer equals a
recount of the raw facts done here. And a database with facts from before the rollup existed
gets them backfilled by its migration."""

from __future__ import annotations

import random
import shutil
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from services.metrics import store
from services.metrics.domain import Filters, Period, bucket_periods, parse_instant
from services.metrics.store import CampaignFacts, ProjectionBatch
from shared.db import apply_migrations, create_pool

pytestmark = pytest.mark.integration

MIGRATIONS = Path(store.__file__).parent / "migrations"
BASE = datetime(2025, 3, 1, tzinfo=UTC)
CAMPAIGNS = {"a": "cpc", "b": "email", "c": "cpc"}


def random_facts(rng: random.Random, n: int) -> list[CampaignFacts]:
    facts = []
    for _ in range(n):
        if rng.random() < 0.1:  # exactly on an hour: the edge of a rollup row
            moment = BASE + timedelta(hours=rng.randrange(72))
        else:
            moment = BASE + timedelta(microseconds=rng.randrange(72 * 3600 * 10**6))
        campaign_id = rng.choice(list(CAMPAIGNS))
        kind = rng.random()
        if kind < 0.6:
            impressions, clicks, spend, currency = 0, 1, Decimal(0), None
        elif kind < 0.8:
            impressions, clicks, spend, currency = rng.randint(1, 900), 0, Decimal(0), None
        else:
            spend = Decimal(rng.randint(1, 99_999)) / 100
            impressions, clicks, currency = 0, 0, "EUR" if rng.random() < 0.85 else "USD"
        facts.append(CampaignFacts(uuid.uuid4(), moment, campaign_id, CAMPAIGNS[campaign_id], impressions, clicks,
                                   spend, currency))  # fmt: skip
    return facts


async def write(pool, facts: list[CampaignFacts]) -> None:
    """The projector's write path: one batch, one transaction."""
    batch = ProjectionBatch()
    for fact in facts:
        batch.campaign.append(fact)
        batch.applied(fact.occurred_at)
    async with pool.acquire() as conn, conn.transaction():
        await store.write_batch(conn, batch)


def recount(facts: list[CampaignFacts], buckets: list[Period], filters: Filters, by: str | None) -> dict:
    """The campaign KPIs of docs/kpis.md, straight from the facts."""
    groups: dict = defaultdict(lambda: [0, 0, Decimal(0)])
    for fact in {f.event_id: f for f in facts}.values():
        if filters.campaign_id not in (None, fact.campaign_id) or filters.channel not in (None, fact.channel):
            continue
        for i, bucket in enumerate(buckets):
            if bucket.start <= fact.occurred_at < bucket.end:
                dim = {"campaign": fact.campaign_id, "channel": fact.channel}.get(by)
                group = groups[(i, dim)]
                group[0] += fact.impressions
                group[1] += fact.clicks
                group[2] += fact.spend if fact.currency in (None, "EUR") else 0
    return {key: tuple(value) for key, value in groups.items()}


async def served(pool, buckets: list[Period], filters: Filters, by: str | None) -> dict:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        groups = await store.kpi_aggregates(conn, buckets, filters, "first_touch", "EUR", by=by)
    return {key: (raw.impressions, raw.clicks, raw.spend) for key, raw in groups.items()}


def questions(rng: random.Random, facts: list[CampaignFacts]) -> list[list[Period]]:
    def anywhere() -> datetime:
        return BASE + timedelta(microseconds=rng.randrange(-3600 * 10**6, 73 * 3600 * 10**6))

    whole = Period(BASE, BASE + timedelta(days=3))
    on_a_fact = sorted(rng.sample([f.occurred_at for f in facts], 2))
    asked = [
        [whole],
        bucket_periods(whole, "day", 366),
        [Period(BASE + timedelta(hours=5, minutes=10), BASE + timedelta(hours=5, minutes=50))],  # inside one hour
        [Period(on_a_fact[0], on_a_fact[1] + timedelta(microseconds=1))],  # edges on facts' own times
        # Local days at +05:30: every boundary cuts an hour.
        bucket_periods(
            Period(
                parse_instant("2025-03-01T00:00:00+05:30", "from"), parse_instant("2025-03-04T00:00:00+05:30", "to")
            ),
            "day",
            366,
        ),  # fmt: skip
    ]
    for _ in range(8):
        start, end = sorted((anywhere(), anywhere()))
        if start < end:
            asked.append([Period(start, end)])
            asked.append(bucket_periods(Period(start, end), "day", 366))
    return asked


async def check_against_recount(pool, facts: list[CampaignFacts], rng: random.Random) -> None:
    filters = [Filters(), Filters(campaign_id="a"), Filters(channel="cpc"), Filters(campaign_id="b", channel="cpc")]
    for buckets in questions(rng, facts):
        for f in filters:
            for by in (None, "campaign", "channel"):
                assert await served(pool, buckets, f, by) == recount(facts, buckets, f, by), (buckets, f, by)


async def rollup_matches_facts(pool) -> bool:
    """Every rollup row is the sum of its hour's facts, and no facts are missing from it."""
    mismatches = await pool.fetchval(
        """SELECT count(*) FROM (
               SELECT date_trunc('hour', occurred_at, 'UTC') AS hour, campaign_id, channel,
                      coalesce(currency, '') AS currency, sum(impressions) AS impressions, sum(clicks) AS clicks,
                      sum(spend) AS spend, count(*) AS facts
               FROM campaign_facts GROUP BY 1, 2, 3, 4
           ) raw FULL JOIN campaign_hourly h USING (hour, campaign_id, channel, currency)
           WHERE (raw.impressions, raw.clicks, raw.spend, raw.facts)
                 IS DISTINCT FROM (h.impressions, h.clicks, h.spend, h.facts)"""
    )
    return mismatches == 0


async def test_rollup_answers_equal_a_recount_of_the_raw_facts_whatever_the_edges(new_database):
    rng = random.Random(20250301)
    pool = await create_pool(await new_database())
    try:
        await apply_migrations(pool, MIGRATIONS)
        facts = random_facts(rng, 3000)
        for i in range(0, len(facts), 250):
            await write(pool, facts[i : i + 250])
        # Replays: batches seen before, and an event twice in one batch, add nothing.
        await write(pool, facts[:400])
        await write(pool, [facts[7], facts[7], *facts[1000:1100]])
        assert await pool.fetchval("SELECT sum(facts) FROM campaign_hourly") == len(facts)
        assert await rollup_matches_facts(pool)
        await check_against_recount(pool, facts, rng)
    finally:
        await pool.close()


async def test_the_migration_backfills_facts_written_before_the_rollup(new_database, tmp_path):
    rng = random.Random(7)
    pool = await create_pool(await new_database())
    try:
        first = tmp_path / "metrics" / "migrations"  # the same migration names, the first one only
        first.mkdir(parents=True)
        shutil.copy(MIGRATIONS / "001_init.sql", first)
        await apply_migrations(pool, first)
        before = random_facts(rng, 1500)
        for i in range(0, len(before), 500):
            await write(pool, before[i : i + 500])

        assert (await apply_migrations(pool, MIGRATIONS))[0] == "metrics/002_campaign_hourly"
        assert await rollup_matches_facts(pool)
        after = random_facts(rng, 500)
        await write(pool, after + before[:100])  # new facts, and a replay of old ones
        assert await rollup_matches_facts(pool)
        await check_against_recount(pool, before + after, rng)
    finally:
        await pool.close()
