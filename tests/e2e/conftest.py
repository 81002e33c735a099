"""Fixtures for end-to-end tests: the four services as processes on the real broker and database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack


@pytest.fixture
async def stack(topics: str, new_database, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Stack]:
    dsns = {service: await new_database() for service in ("leads", "sales", "metrics")}
    running = Stack(topics, dsns, topic_prefix, tmp_path / "logs")
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()
