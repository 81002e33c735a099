"""Sessions are split as page views arrive, batch by batch: whatever the arrival order, the
batch sizes, the replays and when the visitors' links to leads arrive, the page views,
sessions and visitors served equal a recount done here from all the page views at once
(the rules of docs/kpis.md, written again), and so does the hourly page view rollup."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.metrics import store
from services.metrics.domain import Filters, Period, bucket_periods
from services.metrics.store import LeadFacts, PageViewFacts, ProjectionBatch, VisitorLink
from shared.db import apply_migrations, create_pool
from shared.events import Attribution, Touch

pytestmark = pytest.mark.integration

MIGRATIONS = Path(store.__file__).parent / "migrations"
BASE = datetime(2025, 3, 1, tzinfo=UTC)
UTMS = [(None, None)] * 6 + [("a", "cpc"), ("a", "email"), ("b", "email"), (None, "social")]


def random_page_views(rng: random.Random, visitors: list[str]) -> list[PageViewFacts]:
    views = []
    for anonymous_id in visitors:
        moment = BASE + timedelta(minutes=rng.randrange(600))
        latest = rng.choice(UTMS[-4:])
        for _ in range(rng.randint(5, 40)):
            gap = rng.choice([
                timedelta(0),  # the same instant: ordered by event_id
                timedelta(minutes=rng.uniform(0, 12)),
                timedelta(minutes=rng.uniform(25, 35)),
                timedelta(minutes=30),  # exactly the timeout
                timedelta(hours=rng.uniform(1, 20)),
            ])  # fmt: skip
            moment += gap
            # Often the visitor's latest campaign again (a link inside the campaign's landing pages).
            utm = rng.choice([(None, None), (None, None), latest, rng.choice(UTMS)])
            latest = utm if utm[0] else latest
            views.append(PageViewFacts(uuid.uuid4(), anonymous_id, moment, *utm))
    return views


@dataclass
class Session:
    start: datetime
    campaign_id: str | None
    channel: str | None
    views: list[PageViewFacts] = field(default_factory=list)


def sessions_of(views: list[PageViewFacts]) -> list[Session]:
    """GA-like: a new session after 30 minutes of inactivity, or at a page view carrying a
    campaign other than its session's landing one."""
    sessions: list[Session] = []
    for view in sorted(views, key=lambda v: (v.occurred_at, v.event_id)):
        current = sessions[-1] if sessions else None
        if (
            current is None
            or view.occurred_at - current.views[-1].occurred_at >= timedelta(minutes=30)
            or (view.campaign_id is not None and view.campaign_id != current.campaign_id)
        ):
            current = Session(view.occurred_at, view.campaign_id, view.channel)
            sessions.append(current)
        current.views.append(view)
    return sessions


def recount(views: list[PageViewFacts], links: list[VisitorLink], created: dict, buckets: list[Period],
            filters: Filters, by: str | None) -> dict:  # fmt: skip
    by_visitor = defaultdict(list)
    for view in {v.event_id: v for v in views}.values():
        by_visitor[view.anonymous_id].append(view)
    leads_of = defaultdict(set)
    for link in links:
        leads_of[link.anonymous_id].add(link.lead_id)
    page_views: dict = defaultdict(int)
    sessions: dict = defaultdict(int)
    persons: dict = defaultdict(set)
    for anonymous_id, own in by_visitor.items():
        for session in sessions_of(own):
            if filters.campaign_id not in (None, session.campaign_id) or filters.channel not in (None, session.channel):
                continue
            dim = {"campaign": session.campaign_id, "channel": session.channel}.get(by)
            for i, bucket in enumerate(buckets):
                page_views[(i, dim)] += sum(bucket.start <= v.occurred_at < bucket.end for v in session.views)
                if bucket.start <= session.start < bucket.end:
                    sessions[(i, dim)] += 1
                    persons[(i, dim)] |= leads_of[anonymous_id] or {anonymous_id}
    result = {}
    for key in set(page_views) | set(sessions):
        bucket = buckets[key[0]]
        became = [p for p in persons[key] if p in created and bucket.start <= created[p] < bucket.end]
        counts = (page_views[key], sessions[key], len(persons[key]), len(became))
        if any(counts):
            result[key] = counts
    return result


async def served(pool, buckets: list[Period], filters: Filters, by: str | None) -> dict:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        groups = await store.kpi_aggregates(conn, buckets, filters, "first_touch", "EUR", by=by)
    counts = {
        key: (raw.page_views, raw.sessions, raw.visitors, raw.visitors_who_became_leads) for key, raw in groups.items()
    }
    return {key: value for key, value in counts.items() if any(value)}


def lead(lead_id: uuid.UUID, created_at: datetime) -> LeadFacts:
    touch = Touch(occurred_at=created_at)
    return LeadFacts(lead_id, Attribution(first_touch=touch, last_touch=touch), created_at)


async def write(pool, facts: list) -> None:
    """The projector's write path: one batch, one transaction."""
    batch = ProjectionBatch()
    for fact in facts:
        if isinstance(fact, PageViewFacts):
            batch.page_views.append(fact)
            batch.applied(fact.occurred_at)
        elif isinstance(fact, VisitorLink):
            batch.links.append(fact)
        else:
            batch.leads.append(fact)
    async with pool.acquire() as conn, conn.transaction():
        await store.write_batch(conn, batch)


async def rollup_matches_page_views(pool) -> bool:
    mismatches = await pool.fetchval(
        """WITH raw AS (
               SELECT date_trunc('hour', occurred_at, 'UTC') AS hour, session_campaign_id AS campaign_id,
                      session_channel AS channel, count(*) AS page_views
               FROM page_views GROUP BY 1, 2, 3
           ), rollup AS (
               SELECT hour, campaign_id, channel, page_views FROM page_view_hourly WHERE page_views <> 0
           )
           SELECT count(*) FROM ((TABLE raw EXCEPT TABLE rollup) UNION ALL (TABLE rollup EXCEPT TABLE raw)) AS differ"""
    )
    return mismatches == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sessions_split_batch_by_batch_equal_a_recount_of_all_page_views(new_database, seed):
    rng = random.Random(seed)
    pool = await create_pool(await new_database())
    try:
        await apply_migrations(pool, MIGRATIONS)
        visitors = [f"v{n}" for n in range(8)]
        views = random_page_views(rng, visitors)
        leads = {uuid.uuid4(): BASE + timedelta(hours=rng.uniform(0, 60)) for _ in range(4)}
        ids = list(leads)
        # v0 and v1 are one lead's two devices; v2 is shared by two leads; v3 is a third lead's.
        links = [VisitorLink("v0", ids[0]), VisitorLink("v1", ids[0]), VisitorLink("v2", ids[0]),
                 VisitorLink("v2", ids[1]), VisitorLink("v3", ids[2])]  # fmt: skip
        facts = [*views, *links, *(lead(lead_id, at) for lead_id, at in leads.items())]
        rng.shuffle(facts)
        replays = rng.sample(views, 30)
        while facts:
            size = rng.choice([1, 3, 10, 40])
            batch, facts = facts[:size], facts[size:]
            if rng.random() < 0.2:
                batch += rng.sample(replays, 2)  # redelivered, in a later batch or twice in this one
            await write(pool, batch)

        assert await rollup_matches_page_views(pool)
        whole = Period(BASE, BASE + timedelta(days=20))
        questions = [
            [whole],
            bucket_periods(whole, "day", 366),
            [Period(BASE + timedelta(hours=10, minutes=7), BASE + timedelta(days=1, hours=3, minutes=41))],
        ]
        for _ in range(4):
            start, end = sorted(BASE + timedelta(minutes=rng.uniform(0, 3 * 24 * 60)) for _ in range(2))
            questions.append(bucket_periods(Period(start, end), "day", 366))
        filters = [Filters(), Filters(campaign_id="a"), Filters(channel="email"),
                   Filters(campaign_id="a", channel="cpc")]  # fmt: skip
        for buckets in questions:
            for f in filters:
                for by in (None, "campaign", "channel"):
                    expected = recount(views, links, leads, buckets, f, by)
                    assert await served(pool, buckets, f, by) == expected, (buckets, f, by)
    finally:
        await pool.close()
