"""Real infrastructure for the tests: a Kafka broker and a PostgreSQL server.

Where they come from, in order: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL from the
environment; testcontainers when a Docker engine answers and has the image (where no
registry is reachable, a running engine alone is no reason to wait for a pull that
cannot succeed); otherwise the native broker and database that deploy/local/*.sh start
(idempotently) on this machine.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.topics import delete_topics, ensure_topics
from tests.support import LOCAL, PrivateBroker, PrivateCluster, PrivateDatabase, TopicReader

KAFKA_IMAGE = "apache/kafka:4.1.0"
POSTGRES_IMAGE = "postgres:16"


def _docker_has(image: str) -> bool:
    try:
        return subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif _docker_has(KAFKA_IMAGE):
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], check=True)
        yield "127.0.0.1:9092"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A DSN whose role may create databases; each test suite gets its own database."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
    elif _docker_has(POSTGRES_IMAGE):
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
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
    await delete_topics(kafka_bootstrap, prefix)


@pytest.fixture
async def make_settings(topics: str, new_database, topic_prefix: str):
    """Factory for a service's settings pointing at the real broker, this test's topic
    namespace and (when `database=True`) a fresh database of its own."""

    async def make(settings_cls, *, database: bool = True, **overrides):
        values = {
            "env": "test",
            "kafka_bootstrap_servers": topics,
            "topic_prefix": topic_prefix,
            "api_tokens": "test:test-token:read,write,privacy",
        }
        if database:
            values["database_url"] = await new_database()
        values.update(overrides)
        return settings_cls(**values)

    return make


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """For tests that stop the broker: stopping the shared one would break the others."""
    broker = PrivateBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivateDatabase]:
    """For tests that stop the database: stopping the shared one would break the others."""
    database = PrivateDatabase()
    database.reset()
    try:
        yield database
    finally:
        database.stop()


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    """Three brokers of the test's own, for tests that kill one."""
    cluster = PrivateCluster(tmp_path / "kafka-cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
