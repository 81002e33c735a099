"""The outbox relay: publishes committed outbox rows to Kafka in order and marks them sent.

Woken by LISTEN/NOTIFY when a transaction commits new rows, with polling as a fallback.
One relay per database is active at a time (it holds an advisory lock); other replicas
wait on standby. A crash between publishing and marking republishes a few rows, which
consumers recognise by event_id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from itertools import groupby

import asyncpg
from prometheus_client import Gauge

from shared.kafka import EventProducer
from shared.uow import OUTBOX_CHANNEL

log = logging.getLogger(__name__)
_RELAY_LOCK = 0x6F7574626F78  # "outbox"

OUTBOX_BACKLOG = Gauge("embudo_outbox_backlog", "Outbox rows committed but not yet published")
OUTBOX_OLDEST_AGE = Gauge(
    "embudo_outbox_oldest_age_seconds", "How long the oldest unpublished outbox row has waited (0 when none)"
)


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: EventProducer,
        dsn: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        keep_sent_for: timedelta = timedelta(days=1),
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.dsn = dsn
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.keep_sent_for = keep_sent_for
        self._wake = asyncio.Event()

    async def run(self) -> None:
        listener = await asyncpg.connect(self.dsn)
        try:
            # Another replica may hold the lock: stand by until it is released.
            while not await listener.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):  # noqa: ASYNC110
                await asyncio.sleep(self.poll_interval)
            await listener.add_listener(OUTBOX_CHANNEL, lambda *_: self._wake.set())
            polls = 0
            while True:
                self._wake.clear()
                if await self.publish_pending() == self.batch_size:
                    continue  # more waiting: don't sleep
                polls += 1
                await self.report_backlog()
                if polls % 600 == 0:
                    await self.prune()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    pass
        finally:
            await listener.close()

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows; returns how many were published."""
        rows = await self.pool.fetch(
            "SELECT id, topic, key, payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
            self.batch_size,
        )
        if not rows:
            return 0
        # Consecutive rows of one topic go in one batched send; order is kept per key.
        for topic, group in groupby(rows, key=lambda r: r["topic"]):
            messages = [(r["key"].encode(), json.dumps(r["payload"]).encode()) for r in group]
            await self.producer.publish_raw(topic, messages)
        await self.pool.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
        )
        return len(rows)

    async def report_backlog(self) -> None:
        """Reported by the active relay only (a standby one has nothing to say about it)."""
        row = await self.pool.fetchrow(
            """SELECT count(*) AS backlog, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age
               FROM outbox WHERE sent_at IS NULL"""
        )
        OUTBOX_BACKLOG.set(row["backlog"])
        OUTBOX_OLDEST_AGE.set(float(row["age"]))

    async def prune(self) -> None:
        await self.pool.execute("DELETE FROM outbox WHERE sent_at < now() - $1::interval", self.keep_sent_for)
