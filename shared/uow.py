"""Unit of work: one Postgres transaction holding a service's writes and the events they publish."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg

from shared.events import Envelope
from shared.topics import Topic

OUTBOX_CHANNEL = "embudo_outbox"


class UnitOfWork:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._before_commit: list[Callable[[], Awaitable[None]]] = []
        self._notified = False

    def before_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` once, inside this transaction, just before it commits: lets handlers
        buffer rows and write a whole batch's worth in one statement."""
        self._before_commit.append(hook)

    async def flush(self) -> None:
        """Run the before-commit hooks (the consumer and `unit_of_work` call this)."""
        while self._before_commit:
            await self._before_commit.pop(0)()

    async def publish(self, topic: Topic, event: Envelope) -> None:
        """Queue an event in the outbox. It reaches Kafka only if this transaction commits."""
        await self.conn.execute(
            "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
            event.event_id,
            topic.name,
            event.key,
            event.model_dump_json(by_alias=True),
        )
        await self._notify()

    async def publish_many(self, events: Sequence[tuple[Topic, Envelope]]) -> None:
        """Queue several events with one statement, in the order given (the relay's order)."""
        if not events:
            return
        await self.conn.execute(
            """INSERT INTO outbox (event_id, topic, key, payload)
               SELECT event_id, topic, key, payload
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY
                    AS e (event_id, topic, key, payload, n)
               ORDER BY n""",
            [event.event_id for _, event in events],
            [topic.name for topic, _ in events],
            [event.key for _, event in events],
            [event.model_dump_json(by_alias=True) for _, event in events],
        )
        await self._notify()

    async def _notify(self) -> None:
        # Delivered at commit, once however many were sent: one per transaction is enough.
        if not self._notified:
            await self.conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            self._notified = True


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool) -> AsyncIterator[UnitOfWork]:
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn)
        yield uow
        await uow.flush()
