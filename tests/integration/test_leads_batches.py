"""The leads consumer applies a partition batch of form submissions together (set-based,
in one transaction): against the real broker and database, a batch must come to exactly
what applying its submissions one by one comes to — the same rows, and the same lead events
in the same order — with poison messages parked and duplicates counted once."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml

import services.leads.main
from services.leads import store
from services.leads.domain import LeadSummary, ScoringRules
from services.leads.handlers import build_handlers
from services.leads.service import ANONYMOUS_IDS_SHOWN, queue_submission, record_page_view, record_submission
from shared import dlq
from shared.consumer import EventConsumer
from shared.db import apply_migrations, create_pool
from shared.events import Envelope, FormSubmission, PageView, Utm
from shared.kafka import EventProducer
from shared.settings import ServiceSettings
from shared.topics import Topic, dead_letter_topic, ensure_topics
from shared.uow import unit_of_work
from tests.support import eventually

pytestmark = pytest.mark.integration

MIGRATIONS = Path(services.leads.main.__file__).parent / "migrations"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
RULES = ScoringRules.model_validate(
    yaml.safe_load("""
forms: {points: {demo-request: 30, newsletter: 5}, other: 10}
profile: {name: 5, company: 10}
repeat_touches: {each: 5, max: 10}
""")
)
THRESHOLD = 45
# One key for every submission of a test: one partition, so one batch when published before
# the consumer starts.
KEY = "batch"


def submission(email: str, minutes: int, *, form_id: str = "newsletter", campaign: str | None = None, **more):
    data = FormSubmission(form_id=form_id, email=email, utm=Utm(source="test", campaign=campaign), **more)
    return Envelope.wrap(data, source="test", key=KEY, occurred_at=T0 + timedelta(minutes=minutes))


def page_view(anonymous_id: str, minutes: int, campaign: str) -> Envelope:
    data = PageView(anonymous_id=anonymous_id, url="https://shop.example/", utm=Utm(source="test", campaign=campaign))
    return Envelope.wrap(data, source="test", key=anonymous_id, occurred_at=T0 + timedelta(minutes=minutes))


@pytest.fixture
async def new_pool(new_database) -> AsyncIterator:
    pools: list[asyncpg.Pool] = []

    async def make() -> asyncpg.Pool:
        pool = await create_pool(await new_database(), max_size=4)
        await apply_migrations(pool, MIGRATIONS)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture
async def producer(topics: str, topic_prefix: str) -> AsyncIterator[EventProducer]:
    p = EventProducer(topics, client_id="test-leads-batches", send_timeout=10, topic_prefix=topic_prefix)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def consume(topics: str, topic_prefix: str, producer: EventProducer):
    """consume(pool, events, ...): publish `events` to a one-partition topic, then run the
    leads consumer on it until `applied` events are in processed_events and `parked` on the
    DLQ; the consumer takes them in batches of up to `max_batch`."""
    topic = Topic(f"test.leads-batches.{uuid.uuid4().hex[:8]}", keyed_by="-", partitions=1,
                  event_types=(FormSubmission,))  # fmt: skip
    group = f"leads-{uuid.uuid4().hex[:8]}"
    await ensure_topics(topics, (topic, dead_letter_topic(group)), prefix=topic_prefix)
    settings = ServiceSettings(kafka_bootstrap_servers=topics, topic_prefix=topic_prefix)

    async def run(
        pool: asyncpg.Pool, events: list[Envelope], *, applied: int, parked: int = 0, threshold: int | None = None
    ) -> list[dlq.Parked]:
        await producer.publish_many(topic, events)
        handlers = build_handlers(RULES, threshold)
        consumer = EventConsumer(
            group=group,
            topics=[topic],
            handlers={FormSubmission: handlers[FormSubmission]},
            pool=pool,
            producer=producer,
            bootstrap_servers=topics,
            topic_prefix=topic_prefix,
            max_attempts=2,
        )
        task = asyncio.create_task(consumer.run())

        async def done() -> list | None:
            if task.done():
                task.result()  # a consumer that crashed fails the test with its own error
            if await pool.fetchval("SELECT count(*) FROM processed_events") < applied:
                return None
            try:
                found = await dlq.read_parked(settings, group) if parked else []
            except dlq.NoSuchTopic:
                return None
            return (found or True) if len(found) >= parked else None

        try:
            found = await eventually(done)
        finally:
            consumer.stop()
            await asyncio.wait_for(task, 10)
        return [] if found is True else found

    return run


async def one_by_one(pool: asyncpg.Pool, events: list[Envelope], threshold: int | None = None) -> None:
    """The reference: each event in a transaction of its own, as the consumer's retry does."""
    for event in events:
        async with unit_of_work(pool) as uow:
            if isinstance(event.data, PageView):
                await record_page_view(uow, event, RULES, threshold)
            else:
                await record_submission(uow, event, RULES, threshold)


async def in_batches(pool: asyncpg.Pool, events: list[Envelope], sizes: list[int]) -> None:
    """Submissions queued in transactions of `sizes` events each, as the consumer's handler does."""
    start = 0
    for size in sizes:
        async with unit_of_work(pool) as uow:
            for event in events[start : start + size]:
                await queue_submission(uow, event, RULES, None)
        start += size
    assert start == len(events)


async def state(pool: asyncpg.Pool) -> dict:
    """Everything the submissions wrote, with what differs between two databases (lead ids,
    serial ids, times of writing) replaced or left out."""
    leads = await pool.fetch("SELECT * FROM leads ORDER BY email")
    label = {row["lead_id"]: row["email"] for row in leads}

    def lead(row: asyncpg.Record) -> dict:
        values = {k: v for k, v in dict(row).items() if k not in ("lead_id", "updated_at", "summary")}
        return values | {"summary": LeadSummary.model_validate(row["summary"])}

    touches = await pool.fetch("SELECT * FROM touches")
    history = await pool.fetch("SELECT * FROM stage_history ORDER BY id")
    links = await pool.fetch("SELECT * FROM lead_visitors")
    return {
        "leads": [lead(row) for row in leads],
        "touches": sorted(
            ((label[r["lead_id"]], *(v for k, v in dict(r).items() if k not in ("id", "lead_id"))) for r in touches),
            key=repr,
        ),
        "history": sorted(
            ((label[r["lead_id"]], r["from_stage"], r["to_stage"], r["reason"], r["occurred_at"]) for r in history),
            key=repr,
        ),
        "links": sorted((r["anonymous_id"], label[r["lead_id"]], r["last_seen_at"]) for r in links),
    }


async def published(pool: asyncpg.Pool) -> list[dict]:
    """The outbox in the relay's order, each event without its own id and time of writing,
    its lead named by email."""
    label = {str(r["lead_id"]): r["email"] for r in await pool.fetch("SELECT lead_id, email FROM leads")}
    events = []
    for row in await pool.fetch("SELECT key, payload FROM outbox ORDER BY id"):
        event = Envelope.from_bytes(json.dumps(row["payload"])).model_dump(mode="json", by_alias=True)
        del event["event_id"], event["recorded_at"]
        event["key"] = label[row["key"]]
        event["data"]["lead_id"] = label[event["data"]["lead_id"]]
        events.append(event)
    return events


async def batch_transactions(pool: asyncpg.Pool, events: list[Envelope]) -> int:
    """How many transactions applied `events` (processed_at is the transaction's start)."""
    ids = [e.event_id for e in events]
    sql = "SELECT count(DISTINCT processed_at) FROM processed_events WHERE event_id = ANY($1::uuid[])"
    return await pool.fetchval(sql, ids)


# --- one batch = one by one ------------------------------------------------------------------


async def test_a_batch_of_new_and_existing_leads_visitors_and_promotions_is_what_one_by_one_gives(new_pool, consume):
    before = [
        submission("old@example.com", 0, name="Old"),
        submission("shared-a@example.com", 1, anonymous_id="v-shared"),
        page_view("v-early", -30, "launch"),  # a visitor's visit, adopted when it is linked
        page_view("v-shared", -20, "spring"),
    ]
    batch = [
        submission("new@example.com", 10, campaign="c1", name="New"),
        submission("old@example.com", 11, form_id="demo-request", company="Acme"),  # promotes old@
        submission("new@example.com", 12, form_id="pricing", anonymous_id="v-early"),  # adopts launch
        submission("new@example.com", 5, campaign="c0"),  # older, late: created_at and first touch move back
        submission("old@example.com", 13, form_id="pricing"),  # after the promotion: none again
        submission("shared-b@example.com", 14, anonymous_id="v-shared"),  # a device another lead has
        submission("shared-a@example.com", 15, anonymous_id="v-shared"),  # linked already: adopts nothing
        submission("new@example.com", 16, form_id="demo-request", company="New Co", anonymous_id="v-phone"),
        submission("new@example.com", 17, anonymous_id="v-early"),  # seen again: last_seen_at moves
    ]
    reference, batched = await new_pool(), await new_pool()
    await one_by_one(reference, before + batch, THRESHOLD)
    await one_by_one(batched, before, THRESHOLD)
    await consume(batched, batch, applied=len(batch), threshold=THRESHOLD)

    assert await batch_transactions(batched, batch) == 1  # it was one batch
    assert await state(batched) == await state(reference)
    assert await published(batched) == await published(reference)
    events = await published(batched)
    assert [(e["type"], e["key"]) for e in events[3:]] == [  # after the three of `before`
        ("lead.created", "new@example.com"),
        ("lead.touched", "old@example.com"),
        ("lead.stage_changed", "old@example.com"),  # the threshold, in the middle of the batch
        ("lead.touched", "new@example.com"),
        ("lead.touched", "new@example.com"),
        ("lead.touched", "old@example.com"),
        ("lead.created", "shared-b@example.com"),
        ("lead.touched", "shared-a@example.com"),
        ("lead.touched", "new@example.com"),
        ("lead.stage_changed", "new@example.com"),
        ("lead.touched", "new@example.com"),
    ]
    new = [e["data"] for e in events if e["key"] == "new@example.com" and e["type"] != "lead.stage_changed"]
    first_touches = [e["attribution"]["first_touch"]["campaign_id"] for e in new]
    assert first_touches == ["c1", "launch", "launch", "launch", "launch"]
    assert new[-1]["anonymous_ids"] == ["v-early", "v-phone"]
    assert new[-1]["created_at"] == (T0 + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")


async def test_a_poison_message_in_a_batch_is_parked_and_the_others_apply(new_pool, consume):
    poison = submission("   ", 1)  # no email: no lead can be made of it
    batch = [
        submission("ana@example.com", 0),
        poison,
        submission("bo@example.com", 2, name="Bo"),
        submission("ana@example.com", 3, form_id="demo-request"),
    ]
    good = [e for e in batch if e is not poison]
    reference, batched = await new_pool(), await new_pool()
    await one_by_one(reference, good)
    parked = await consume(batched, batch, applied=len(good), parked=1)

    assert [(p.summary()["event_id"], p.summary()["attempts"]) for p in parked] == [(str(poison.event_id), 2)]
    assert "without an email" in parked[0].headers["error"]
    assert await batched.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", poison.event_id) == 0
    assert await state(batched) == await state(reference)
    assert await published(batched) == await published(reference)


async def test_duplicates_inside_one_batch_count_once(new_pool, consume):
    first, second, other = (
        submission("cy@example.com", 0, name="Cy"),
        submission("cy@example.com", 5),
        submission("di@example.com", 1),
    )
    batch = [first, first, second, other, second, first]  # ingest retries: the same events again
    reference, batched = await new_pool(), await new_pool()
    await one_by_one(reference, [first, second, other])
    await consume(batched, batch, applied=3)

    assert await batch_transactions(batched, [first, second, other]) == 1
    assert await state(batched) == await state(reference)
    events = await published(batched)
    assert events == await published(reference)
    assert [(e["type"], e["key"]) for e in events] == [
        ("lead.created", "cy@example.com"),
        ("lead.touched", "cy@example.com"),
        ("lead.created", "di@example.com"),
    ]
    assert await batched.fetchval("SELECT touch_count FROM leads WHERE email = 'cy@example.com'") == 2


async def test_many_submissions_of_one_lead_in_one_batch(new_pool, consume):
    """Each of a lead's events says what the lead came to as of its submission."""
    batch = [submission("eve@example.com", minutes, campaign=f"c{minutes}") for minutes in (30, 10, 50, 0, 40, 20)]
    reference, batched = await new_pool(), await new_pool()
    await one_by_one(reference, batch)
    await consume(batched, batch, applied=len(batch))

    assert await batch_transactions(batched, batch) == 1
    assert await state(batched) == await state(reference)
    events = await published(batched)
    assert events == await published(reference)
    assert [e["type"] for e in events] == ["lead.created"] + ["lead.touched"] * 5
    assert [e["data"]["attribution"]["first_touch"]["campaign_id"] for e in events] == [
        "c30", "c10", "c10", "c0", "c0", "c0"
    ]  # fmt: skip
    assert [e["data"]["attribution"]["last_touch"]["campaign_id"] for e in events] == [
        "c30", "c30", "c50", "c50", "c50", "c50"
    ]  # fmt: skip
    assert [e["data"]["score"] for e in events] == [5, 10, 15, 15, 15, 15]  # repeat touches capped at 10


async def test_a_lead_with_more_visitors_than_shown_lists_the_same_ones_batched(new_pool, consume):
    """Past ANONYMOUS_IDS_SHOWN the events keep the most recently seen; ties at the same time
    are broken by the id's bytes in the batch's arithmetic and in the store's query alike.
    The ids (case, punctuation) order differently under a language collation, which is what
    a database created with one would otherwise use."""
    ids = [f"{prefix}{n:03d}" for n in range(ANONYMOUS_IDS_SHOWN // 2 + 5) for prefix in ("v-", "V_")]
    before = [submission("bot@example.com", 0, anonymous_id=i) for i in ids[::2]]
    batch = [submission("bot@example.com", 0, anonymous_id=i) for i in ids[1::2]]
    reference, batched = await new_pool(), await new_pool()
    await one_by_one(reference, before + batch)
    await one_by_one(batched, before)
    await consume(batched, batch, applied=len(batch))

    assert await batch_transactions(batched, batch) == 1
    assert await published(batched) == await published(reference)
    last = (await published(batched))[-1]["data"]["anonymous_ids"]
    assert len(last) == ANONYMOUS_IDS_SHOWN
    async with batched.acquire() as conn:
        lead_id = await conn.fetchval("SELECT lead_id FROM leads")
        assert await store.anonymous_ids(conn, lead_id, ANONYMOUS_IDS_SHOWN) == last


# --- order independence ---------------------------------------------------------------------


def people() -> list[Envelope]:
    """Submissions of four people, one of them from two devices and one device shared."""
    events = []
    for n, person in enumerate(("fa", "gu", "ha", "io")):
        email = f"{person}@example.com"
        events += [
            submission(email, n, campaign=f"{person}-1", name=person.title()),
            submission(email, 30 - n, form_id="demo-request", anonymous_id=f"v-{person}"),
            submission(email, 20 + n, form_id="pricing", company=f"{person} Inc", anonymous_id="v-shared"),
            submission(email, 40 + n, fields={"plan": f"plan-{n}"}, anonymous_id=f"v-{person}"),
        ]
    return events


async def test_the_same_submissions_in_any_order_and_any_batches_make_the_same_leads(new_pool):
    events = people()
    visits = [page_view("v-fa", -5, "launch"), page_view("v-shared", -3, "spring")]
    expected = None
    shuffle = random.Random(7)
    for attempt in range(5):
        pool = await new_pool()
        await one_by_one(pool, visits)
        order = events[:] if attempt == 0 else shuffle.sample(events, len(events))
        sizes = [len(order)] if attempt == 1 else [1] * len(order) if attempt == 0 else []
        while sum(sizes) < len(order):
            sizes.append(min(shuffle.randint(1, 7), len(order) - sum(sizes)))
        await in_batches(pool, order, sizes)
        result = await state(pool)
        expected = expected or result
        assert result == expected, (order, sizes)
    assert [lead["touch_count"] for lead in expected["leads"]] == [6, 5, 5, 5]  # fa: both visits; others: spring


async def test_two_batches_sharing_leads_at_once_both_apply(new_pool):
    """Leads are locked in one order whatever the batch's order, so two batches wait for each
    other rather than deadlock, and neither loses the other's submissions."""
    pool = await new_pool()
    emails = [f"p{i}@example.com" for i in range(20)]
    one = [submission(email, i) for i, email in enumerate(emails)]
    other = [submission(email, 100 + i) for i, email in enumerate(reversed(emails))]
    await one_by_one(pool, [submission(email, -1) for email in emails[::2]])  # half exist already
    await asyncio.gather(in_batches(pool, one, [len(one)]), in_batches(pool, other, [len(other)]))
    rows = await pool.fetch("SELECT email, touch_count, summary FROM leads ORDER BY email")
    assert len(rows) == len(emails)
    for row in rows:
        existed = emails.index(row["email"]) % 2 == 0
        assert row["touch_count"] == (3 if existed else 2)
        assert LeadSummary.model_validate(row["summary"]).touch_count == row["touch_count"]
