"""Unit of work: one Postgres transaction holding a service's writes and the events they publish."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from shared.events import Envelope
from shared.topics import Topic

OUTBOX_CHANNEL = "embudo_outbox"


class UnitOfWork:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def publish(self, topic: Topic, event: Envelope) -> None:
        """Queue an event in the outbox. It reaches Kafka only if this transaction commits."""
        await self.conn.execute(
            "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
            event.event_id,
            topic.name,
            event.key,
            event.model_dump_json(by_alias=True),
        )
        # Delivered at commit; identical notifications in one transaction collapse into one.
        await self.conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool) -> AsyncIterator[UnitOfWork]:
    async with pool.acquire() as conn, conn.transaction():
        yield UnitOfWork(conn)
