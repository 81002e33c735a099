"""Real infrastructure for the tests: a Kafka broker and a PostgreSQL server.

Where they come from, in order: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL from the
environment; testcontainers when a Docker engine answers; otherwise the native broker
and database that deploy/local/*.sh start (idempotently) on this machine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import Envelope
from shared.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local"


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], check=True)
        yield "127.0.0.1:9092"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A DSN whose role may create databases; each test suite gets its own database."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        subprocess.run([str(LOCAL / "postgres.sh"), "start"], check=True)
        yield "postgresql://embudo:embudo@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
async def topics(kafka_bootstrap: str) -> str:
    await ensure_topics(kafka_bootstrap)
    return kafka_bootstrap


def with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
async def new_database(postgres_dsn: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory: a fresh, empty database per call; all dropped at the end of the session."""
    created: list[str] = []

    async def make() -> str:
        name = f"embudo_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return with_database(postgres_dsn, name)

    yield make
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class TopicReader:
    """Reads what is published to a topic after the reader was opened."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.records: list = []

    async def open(self) -> None:
        await self.consumer.start()
        # A topic created a moment ago may not be in the metadata yet: ask until it is.
        for _ in range(100):
            partitions = self.consumer.partitions_for_topic(self.topic)
            if partitions:
                break
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"topic {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions or ())]
        self.consumer.assign(tps)
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            self.consumer.seek(tp, ends[tp])

    async def close(self) -> None:
        await self.consumer.stop()

    async def read_until(self, done: Callable[[list], bool], timeout: float = 20.0) -> list:
        """Collect records until `done(records)` holds; fails the test on timeout."""
        async def collect() -> None:
            while not done(self.records):
                batch = await self.consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    self.records.extend(records)

        await asyncio.wait_for(collect(), timeout)
        return self.records

    async def events(self, count: int, timeout: float = 20.0) -> list[Envelope]:
        records = await self.read_until(lambda r: len(r) >= count, timeout)
        return [Envelope.from_bytes(r.value) for r in records]

    async def quiet(self, seconds: float = 1.5) -> list:
        """Everything that arrives within `seconds` (to show that nothing more came)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            batch = await self.consumer.getmany(timeout_ms=int(left * 1000) + 1)
            for records in batch.values():
                self.records.extend(records)
        return self.records


@pytest.fixture
async def topic_reader(topics: str) -> AsyncIterator[Callable[[str], Awaitable[TopicReader]]]:
    readers: list[TopicReader] = []

    async def open_reader(topic: str) -> TopicReader:
        reader = TopicReader(topics, topic)
        await reader.open()
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        await reader.close()


@pytest.fixture
async def topic_prefix(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A fresh namespace of topics per test: no history from other tests, no shared groups.
    Its topics are deleted afterwards, so the broker doesn't accumulate thousands of them."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield prefix
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture
async def make_settings(topics: str, new_database, topic_prefix: str):
    """Factory for a service's settings pointing at the real broker, this test's topic
    namespace and (when `database=True`) a fresh database of its own."""

    async def make(settings_cls, *, database: bool = True, **overrides):
        values = {
            "env": "test",
            "kafka_bootstrap_servers": topics,
            "topic_prefix": topic_prefix,
            "api_tokens": "test-token",
        }
        if database:
            values["database_url"] = await new_database()
        values.update(overrides)
        return settings_cls(**values)

    return make


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (migrations, consumer, relay) and talk to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[object]], timeout: float = 30.0, interval: float = 0.1):
    """Poll `check` until it returns something truthy; fail with its last value on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
