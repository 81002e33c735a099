"""`python -m shared.dlq` against the real broker: list, show and replay what a real
EventConsumer parked, and a replay applied exactly once however often it is repeated."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import dlq
from shared.consumer import EventConsumer
from shared.db import apply_migrations, create_pool
from shared.events import Envelope, FormSubmission, Utm
from shared.kafka import EventProducer
from shared.settings import ServiceSettings
from shared.topics import Topic, dead_letter_topic, ensure_topics
from shared.uow import UnitOfWork
from tests.support import ROOT, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(topics: str, topic_prefix: str):
    p = EventProducer(topics, client_id="test", send_timeout=10, topic_prefix=topic_prefix)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def pool(new_database, tmp_path: Path):
    migrations = tmp_path / "testsvc" / "migrations"
    migrations.mkdir(parents=True)
    (migrations / "001_effects.sql").write_text("CREATE TABLE effects (event_id uuid NOT NULL, email text NOT NULL);")
    p = await create_pool(await new_database())
    await apply_migrations(p, migrations)
    yield p
    await p.close()


def submission(email: str) -> Envelope:
    data = FormSubmission(form_id="demo", email=email, utm=Utm(source="google", medium="cpc", campaign="c1"))
    return Envelope.wrap(data, source="test", key=email, occurred_at=datetime.now(UTC))


async def run_until(consumer: EventConsumer, condition, timeout: float = 30.0) -> None:
    task = asyncio.create_task(consumer.run())
    try:

        async def done() -> bool:
            if task.done():
                task.result()  # a consumer that crashed fails the test with its own error
            return await condition()

        await eventually(done, timeout)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


async def test_list_show_and_replay_what_a_consumer_parked(topics, topic_prefix, producer, pool, topic_reader):
    topic = Topic(f"test.dlq.{uuid.uuid4().hex[:8]}", keyed_by="email", partitions=1, event_types=(FormSubmission,))
    group = f"test-{uuid.uuid4().hex[:8]}"
    await ensure_topics(topics, (topic, dead_letter_topic(group)), prefix=topic_prefix)
    settings = ServiceSettings(kafka_bootstrap_servers=topics, topic_prefix=topic_prefix)
    source_topic = topic_prefix + topic.name

    failing = submission("fails@example.com")
    await producer.publish_raw(topic.name, [(b"junk-key", b"{not json")])
    await producer.publish_many(topic, [failing])

    broken = True
    calls: list[uuid.UUID] = []

    async def handle(event: Envelope[FormSubmission], uow: UnitOfWork) -> None:
        if broken:
            raise ValueError("the CRM refused this lead\nsecond line of detail")
        calls.append(event.event_id)
        await uow.conn.execute("INSERT INTO effects VALUES ($1, $2)", event.event_id, event.data.email)

    def consumer() -> EventConsumer:
        return EventConsumer(
            group=group,
            topics=[topic],
            handlers={FormSubmission: handle},
            pool=pool,
            producer=producer,
            bootstrap_servers=topics,
            topic_prefix=topic_prefix,
            max_attempts=2,
        )

    async def parked(count: int):
        try:
            found = await dlq.read_parked(settings, group)
        except dlq.NoSuchTopic:  # a topic created a moment ago may not be in the metadata yet
            return None
        return found if len(found) >= count else None

    async def both_parked():
        return await parked(2)

    await run_until(consumer(), both_parked)

    # list: the headers the consumer wrote, read back as fields
    unparseable, poison = await dlq.read_parked(settings, group)
    assert unparseable.summary() == {
        "group": group,
        "dlq_offset": 0,
        "source_topic": source_topic,
        "source_partition": 0,
        "source_offset": 0,
        "attempts": 1,
        "error": "1 validation error for Envelope",  # the first line of pydantic's message
        "event_type": "unparseable",
        "event_id": None,
    }
    assert "Invalid JSON" in unparseable.headers["error"]
    assert poison.summary() == {
        "group": group,
        "dlq_offset": 1,
        "source_topic": source_topic,
        "source_partition": 0,
        "source_offset": 1,
        "attempts": 2,
        "error": "ValueError('the CRM refused this lead\\nsecond line of detail')",
        "event_type": "form_submission",
        "event_id": str(failing.event_id),
    }
    assert (poison.key, poison.value) == (failing.key.encode(), failing.to_bytes())

    # the CLI itself, configured only through the environment
    env = os.environ | {"EMBUDO_KAFKA_BOOTSTRAP_SERVERS": topics, "EMBUDO_TOPIC_PREFIX": topic_prefix}
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "shared.dlq", "list", "--group", group, "--json"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, stderr.decode()
    assert [json.loads(line) for line in stdout.decode().splitlines()] == [unparseable.summary(), poison.summary()]

    # show: every header, the value as pretty JSON
    shown = dlq.describe(poison)
    assert f"source_topic: {source_topic}" in shown and "attempts: 2" in shown and "offset: 1" in shown
    assert json.dumps(json.loads(failing.to_bytes()), indent=2) in shown
    assert "value:\n{not json" in dlq.describe(unparseable)

    # replay one by offset: its exact key and bytes arrive on the source topic
    source = await topic_reader(source_topic)
    await dlq.replay(settings, dlq.select([unparseable, poison], [1]))
    [replayed] = await source.read_until(lambda r: len(r) >= 1)
    assert (replayed.key, replayed.value, replayed.headers) == (poison.key, poison.value, ())

    # replay --all: both again, in DLQ order; the DLQ itself is unchanged
    await dlq.replay(settings, await dlq.read_parked(settings, group))
    records = await source.read_until(lambda r: len(r) >= 3)
    assert [r.value for r in records[1:]] == [b"{not json", failing.to_bytes()]
    assert len(await dlq.read_parked(settings, group)) == 2

    # The cause fixed, the group resumes: the event replayed twice is applied once, and the
    # unparseable one is parked again (a replay cannot make it valid).
    broken = False
    admin = AIOKafkaAdminClient(bootstrap_servers=topics)
    await admin.start()

    async def caught_up() -> bool:  # committed past the second copy, the last record
        offsets = await admin.list_consumer_group_offsets(group)
        return offsets[TopicPartition(source_topic, 0)].offset == 5

    try:
        await run_until(consumer(), caught_up)
    finally:
        await admin.close()
    assert len(await dlq.read_parked(settings, group)) == 3
    await asyncio.sleep(1)  # room for a wrongful second application to show
    assert calls == [failing.event_id]
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", failing.event_id) == 1


async def test_unknown_offsets_and_groups_are_refused(topics, topic_prefix):
    settings = ServiceSettings(kafka_bootstrap_servers=topics, topic_prefix=topic_prefix)
    with pytest.raises(dlq.NoSuchTopic):
        await dlq.read_parked(settings, "nobody")
    with pytest.raises(LookupError, match="offset 7"):
        dlq.select([], [7])
    with pytest.raises(SystemExit):  # replay needs --offset or --all
        dlq.build_parser().parse_args(["replay", "--group", "leads"])
