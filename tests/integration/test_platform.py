"""The shared plumbing against the real broker and database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import REGISTRY

from shared.consumer import EventConsumer
from shared.db import apply_migrations, create_pool
from shared.events import CampaignEvent, Envelope, FormSubmission, Utm
from shared.kafka import EventProducer
from shared.outbox import OutboxRelay
from shared.topics import ALL_TOPICS, CAMPAIGN_EVENTS, FORM_SUBMISSIONS, Topic, dead_letter_topic, ensure_topics
from shared.uow import UnitOfWork, unit_of_work

pytestmark = pytest.mark.integration


def submission(email: str = "Ana@Example.com", **overrides) -> Envelope:
    data = FormSubmission(form_id="demo", email=email, utm=Utm(source="google", medium="cpc", campaign="c1"))
    return Envelope.wrap(data, source="test", key=email.lower(), occurred_at=datetime.now(UTC), **overrides)


@pytest.fixture
async def producer(topics: str, topic_prefix: str):
    await ensure_topics(topics, prefix=topic_prefix)
    p = EventProducer(topics, client_id="test", send_timeout=10, topic_prefix=topic_prefix)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def effects_migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "testsvc" / "migrations"
    folder.mkdir(parents=True)
    (folder / "001_effects.sql").write_text("CREATE TABLE effects (event_id uuid NOT NULL, email text NOT NULL);")
    return folder


@pytest.fixture
async def dsn(new_database) -> str:
    return await new_database()


@pytest.fixture
async def pool(dsn, effects_migrations):
    p = await create_pool(dsn)
    await apply_migrations(p, effects_migrations)
    yield p
    await p.close()


async def test_envelope_round_trip_through_a_real_topic(producer, topic_reader, topic_prefix):
    reader = await topic_reader(topic_prefix + FORM_SUBMISSIONS.name)
    sent = submission()
    await producer.publish(FORM_SUBMISSIONS, sent)

    [received] = await reader.events(1)
    assert received == sent
    assert isinstance(received.data, FormSubmission)
    assert received.data.utm.campaign == "c1"
    assert received.occurred_at.tzinfo is not None


async def test_migrations_are_idempotent(new_database, effects_migrations):
    p = await create_pool(await new_database())
    try:
        first = await apply_migrations(p, effects_migrations)
        second = await apply_migrations(p, effects_migrations)
        assert "testsvc/001_effects" in first and "shared/001_outbox_and_processed_events" in first
        assert second == []
    finally:
        await p.close()


def record_effect(calls: list[uuid.UUID]):
    async def handle(event: Envelope[FormSubmission], uow: UnitOfWork) -> None:
        calls.append(event.event_id)
        await uow.conn.execute("INSERT INTO effects VALUES ($1, $2)", event.event_id, event.data.email)

    return handle


async def run_consumer_until(consumer: EventConsumer, condition, timeout: float = 30.0) -> None:
    task = asyncio.create_task(consumer.run())
    try:

        async def wait() -> None:
            while not await condition():
                if task.done():
                    task.result()
                await asyncio.sleep(0.1)

        await asyncio.wait_for(wait(), timeout)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
def consumer_of(topics, producer, pool, topic_prefix):
    """An EventConsumer of one test topic, with one form_submission handler."""

    def make(topic: Topic, group: str, handler, *, max_attempts: int = 3) -> EventConsumer:
        return EventConsumer(
            group=group,
            topics=[topic],
            handlers={FormSubmission: handler},
            pool=pool,
            producer=producer,
            bootstrap_servers=topics,
            topic_prefix=topic_prefix,
            max_attempts=max_attempts,
        )

    return make


def unique_topic(name: str) -> Topic:
    return Topic(f"test.{name}.{uuid.uuid4().hex[:8]}", keyed_by="test", partitions=1, event_types=(FormSubmission,))


@pytest.fixture
def topic_with_dlq(topics, topic_reader, topic_prefix):
    """A fresh test topic, a consumer group name, and a reader of that group's dead-letter topic."""

    async def make(name: str):
        topic, group = unique_topic(name), f"test-{uuid.uuid4().hex[:8]}"
        dlq = dead_letter_topic(group)
        await ensure_topics(topics, (topic, dlq), prefix=topic_prefix)
        return topic, group, await topic_reader(topic_prefix + dlq.name)

    return make


async def test_consumer_applies_a_redelivered_event_once(topics, producer, pool, topic_prefix, consumer_of):
    topic = unique_topic("dedupe")
    await ensure_topics(topics, (topic,), prefix=topic_prefix)
    event = submission()
    # The same event twice (a client retry), plus a second one: two effects, not three.
    other = submission("bo@example.com")
    await producer.publish_many(topic, [event, event, other])

    calls: list[uuid.UUID] = []
    group = f"test-{uuid.uuid4().hex[:8]}"

    consumer = consumer_of(topic, group, record_effect(calls))

    async def two_effects() -> bool:
        return await pool.fetchval("SELECT count(*) FROM effects") >= 2

    await run_consumer_until(consumer, two_effects)
    # Replay from the beginning with a new group: everything is recognised as processed.
    replay = consumer_of(topic, f"{group}-replay", record_effect(calls))

    async def all_seen() -> bool:
        return await pool.fetchval("SELECT count(*) FROM processed_events") == 2 and len(calls) >= 2

    await run_consumer_until(replay, all_seen)
    await asyncio.sleep(1)  # give a wrongful second application the chance to show
    assert await pool.fetchval("SELECT count(*) FROM effects") == 2
    assert sorted(calls) == sorted([event.event_id, other.event_id])


async def test_poison_messages_go_to_the_dead_letter_topic_and_the_partition_moves_on(
    producer, pool, topic_prefix, consumer_of, topic_with_dlq
):
    topic, group, dlq_reader = await topic_with_dlq("poison")

    good = submission("good@example.com")
    failing = submission("fails@example.com")
    await producer.publish_raw(topic.name, [(b"k", b"{not json")])
    await producer.publish_many(topic, [failing, good])

    async def handle(event: Envelope[FormSubmission], uow: UnitOfWork) -> None:
        if event.data.email.startswith("fails"):
            raise ValueError("this lead cannot be handled")
        await uow.conn.execute("INSERT INTO effects VALUES ($1, $2)", event.event_id, event.data.email)

    consumer = consumer_of(topic, group, handle, max_attempts=3)

    async def good_applied() -> bool:
        return await pool.fetchval("SELECT count(*) FROM effects WHERE email = 'good@example.com'") == 1

    await run_consumer_until(consumer, good_applied)
    parked = await dlq_reader.read_until(lambda r: len(r) >= 2)
    unparseable, handler_failure = sorted(parked, key=lambda r: dict(r.headers)["offset"])
    headers = dict(handler_failure.headers)
    assert headers["source_topic"] == (topic_prefix + topic.name).encode()
    assert headers["partition"] == b"0"
    assert headers["offset"] == b"1"
    assert headers["attempts"] == b"3"
    assert b"this lead cannot be handled" in headers["error"]
    assert Envelope.from_bytes(handler_failure.value).event_id == failing.event_id
    assert unparseable.value == b"{not json"
    assert dict(unparseable.headers)["attempts"] == b"1"
    # The failed event's partial effects were rolled back.
    assert await pool.fetchval("SELECT count(*) FROM effects WHERE email LIKE 'fails%'") == 0


async def test_stopping_during_an_outage_parks_nothing_and_leaves_the_event_for_the_next_run(
    producer, consumer_of, topic_with_dlq
):
    # An outage (here: a handler that cannot reach what it needs) says nothing about the
    # message, so stopping in the middle of one must not dead-letter it or commit it.
    topic, group, dlq_reader = await topic_with_dlq("outage")
    event = submission("waits@example.com")
    await producer.publish_many(topic, [event])

    attempts: list[uuid.UUID] = []

    async def unreachable(event: Envelope[FormSubmission], uow: UnitOfWork) -> None:
        attempts.append(event.event_id)
        raise ConnectionRefusedError("the CRM is down")

    async def retried_a_few_times() -> bool:
        return len(attempts) >= 3

    await run_consumer_until(consumer_of(topic, group, unreachable, max_attempts=2), retried_a_few_times)
    assert await dlq_reader.quiet(1.5) == []

    calls: list[uuid.UUID] = []

    async def applied() -> bool:
        return len(calls) == 1

    await run_consumer_until(consumer_of(topic, group, record_effect(calls)), applied)
    assert calls == [event.event_id]


async def test_outbox_relay_publishes_exactly_the_committed_rows(producer, pool, dsn, topic_reader, topic_prefix):
    reader = await topic_reader(topic_prefix + CAMPAIGN_EVENTS.name)
    committed = [
        Envelope.wrap(
            CampaignEvent(campaign_id=f"outbox-{uuid.uuid4().hex[:6]}", channel="cpc", event="click", count=i + 1),
            source="test",
            key="c",
            occurred_at=datetime.now(UTC),
        )
        for i in range(3)
    ]
    async with unit_of_work(pool) as uow:
        for event in committed:
            await uow.publish(CAMPAIGN_EVENTS, event)

    rolled_back = Envelope.wrap(
        CampaignEvent(campaign_id="never", channel="cpc", event="click"),
        source="test",
        key="c",
        occurred_at=datetime.now(UTC),
    )
    with pytest.raises(RuntimeError):
        async with unit_of_work(pool) as uow:
            await uow.publish(CAMPAIGN_EVENTS, rolled_back)
            raise RuntimeError("the state change failed")

    relay = OutboxRelay(pool, producer, dsn, poll_interval=0.2)
    await relay.report_backlog()
    assert REGISTRY.get_sample_value("embudo_outbox_backlog") == 3
    assert REGISTRY.get_sample_value("embudo_outbox_oldest_age_seconds") > 0
    task = asyncio.create_task(relay.run())
    try:
        received = await reader.events(3)
        extra = await reader.quiet(1.5)  # nothing more: no rolled-back row, no double send
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [e.event_id for e in received] == [e.event_id for e in committed]
    assert len(extra) == 3
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    assert REGISTRY.get_sample_value("embudo_outbox_backlog") == 0
    assert REGISTRY.get_sample_value("embudo_outbox_oldest_age_seconds") == 0


async def test_the_consumer_reports_its_lag_per_partition(topics, producer, pool, topic_prefix):
    topic = unique_topic("lag")
    await ensure_topics(topics, (topic,), prefix=topic_prefix)
    await producer.publish_many(topic, [submission(f"v{i}@example.com") for i in range(20)])
    gate, applied = asyncio.Event(), []

    async def handle(event: Envelope[FormSubmission], uow: UnitOfWork) -> None:
        if len(applied) == 5:  # the second batch waits until the test has read the lag
            await gate.wait()
        applied.append(event.event_id)

    group = f"test-{uuid.uuid4().hex[:8]}"
    consumer = EventConsumer(group=group, topics=[topic], handlers={FormSubmission: handle}, pool=pool,
                             producer=producer, bootstrap_servers=topics, topic_prefix=topic_prefix,
                             max_batch=5)  # fmt: skip
    labels = {"group": group, "topic": topic_prefix + topic.name, "partition": "0"}

    def lag() -> float | None:
        return REGISTRY.get_sample_value("embudo_consumer_lag", labels)

    async def behind_by_fifteen() -> bool:
        if lag() == 15:
            gate.set()
            return True
        return False

    async def caught_up() -> bool:
        return len(applied) == 20 and lag() == 0

    task = asyncio.create_task(consumer.run())
    try:
        for condition in (behind_by_fifteen, caught_up):
            async with asyncio.timeout(30):
                while not await condition():
                    assert not task.done(), task
                    await asyncio.sleep(0.05)
    finally:
        gate.set()
        consumer.stop()
        await asyncio.wait_for(task, 10)


async def test_dedupe_rows_past_their_retention_are_pruned(topics, producer, pool, topic_prefix, consumer_of):
    old, recent = uuid.uuid4(), uuid.uuid4()
    for event_id, age in ((old, timedelta(days=31)), (recent, timedelta(days=29))):
        await pool.execute(
            """INSERT INTO processed_events (event_id, event_type, topic, kafka_partition, kafka_offset, processed_at)
               VALUES ($1, 'form_submission', 't', 0, 0, now() - $2::interval)""",
            event_id,
            age,
        )
    topic = unique_topic("prune")
    await ensure_topics(topics, (topic,), prefix=topic_prefix)
    consumer = consumer_of(topic, f"test-{uuid.uuid4().hex[:8]}", record_effect([]))
    consumer.keep_processed_for = timedelta(days=30)

    async def old_row_gone() -> bool:
        return await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", old) == 0

    await run_consumer_until(consumer, old_row_gone)
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", recent) == 1


async def test_topics_keep_their_events_for_good(topics, topic_prefix):
    # The broker's default would delete events (and parked DLQ messages) after 7 days.
    await ensure_topics(topics, ALL_TOPICS, prefix=topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=topics)
    await admin.start()
    try:
        names = [topic_prefix + t.name for t in ALL_TOPICS]
        resources = [ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": None}) for name in names]
        [response] = await admin.describe_configs(resources)
    finally:
        await admin.close()
    retention = {name: {c[0]: c[1] for c in configs}["retention.ms"] for _, _, _, name, configs in response.resources}
    assert retention == dict.fromkeys(names, "-1")
