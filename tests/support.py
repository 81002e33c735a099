"""Helpers for tests: reading topics, serving an app in-process, waiting for a condition,
a broker, a cluster and a database of a test's own."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI

from shared.events import Envelope

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateDatabase:
    """A PostgreSQL cluster of the tests' own (Debian's tooling, via the same script as
    `make infra-up`, cluster `embudofaults` on its own port), so a test can stop and restart
    it without taking the shared one away from anyone. Its databases start empty."""

    PORT = 5439

    def __init__(self) -> None:
        self.env = os.environ | {"POSTGRES_PORT": str(self.PORT), "POSTGRES_CLUSTER": "embudofaults"}

    def dsn(self, database: str) -> str:
        return f"postgresql://embudo:embudo@127.0.0.1:{self.PORT}/{database}"

    def reset(self) -> None:
        subprocess.run([str(LOCAL / "postgres.sh"), "reset"], env=self.env, check=True, timeout=240)

    def start(self) -> None:
        subprocess.run([str(LOCAL / "postgres.sh"), "start"], env=self.env, check=True, timeout=240)

    def stop(self) -> None:
        subprocess.run([str(LOCAL / "postgres.sh"), "stop"], env=self.env, check=True, timeout=240)


class PrivateCluster:
    """Three KRaft nodes of the test's own (kafka.sh with KAFKA_BROKERS=3: a quorum of three,
    internal topics with replication factor 3), on six consecutive free ports."""

    def __init__(self, state_dir: Path, brokers: int = 3) -> None:
        self.state_dir = state_dir
        self.brokers = brokers
        base = consecutive_free_ports(2 * brokers)
        self.env = os.environ | {
            "KAFKA_BROKERS": str(brokers),
            "KAFKA_STATE_DIR": str(state_dir),
            "KAFKA_PORT": str(base),
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx384m",
        }
        self.ports = {node: base + 2 * (node - 1) for node in range(1, brokers + 1)}
        self.bootstrap = ",".join(f"127.0.0.1:{port}" for port in self.ports.values())

    def start(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], env=self.env, check=True, timeout=240)

    def stop(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "stop"], env=self.env, check=True, timeout=240)

    def kill(self, node: int) -> None:
        """SIGKILL one node's JVM: no controlled shutdown, no leadership handed over."""
        pid = int((self.state_dir / f"node-{node}" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    for _ in range(200):
        base = random.randint(20_000, 40_000)
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


class PrivateBroker:
    """A broker of the test's own (the same jars and script as `make infra-up`, its own
    state dir and ports), so a test can stop and restart it without disturbing anyone."""

    def __init__(self, state_dir: Path) -> None:
        self.env = os.environ | {
            "KAFKA_STATE_DIR": str(state_dir),
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
        }
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def start(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], env=self.env, check=True, timeout=240)

    def stop(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "stop"], env=self.env, check=True, timeout=240)
