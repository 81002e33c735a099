"""Fixtures for end-to-end tests: the four services as processes on the real broker and database."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack

LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "local"


@pytest.fixture
async def stack(topics: str, new_database, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Stack]:
    dsns = {service: await new_database() for service in ("leads", "sales", "metrics")}
    running = Stack(topics, dsns, topic_prefix, tmp_path / "logs")
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateBroker:
    """A broker of the test's own (same jars and script as `make infra-up`), so a test can
    stop and restart it without disturbing anything else."""

    def __init__(self, state_dir: Path) -> None:
        self.env = os.environ | {
            "KAFKA_STATE_DIR": str(state_dir),
            "KAFKA_PORT": str(_free_port()),
            "KAFKA_CONTROLLER_PORT": str(_free_port()),
        }
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def start(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], env=self.env, check=True)

    def stop(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "stop"], env=self.env, check=True)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
