"""Publishing events: an idempotent producer (acks=all) whose every send has an outer bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.events import Envelope
from shared.topics import Topic

log = logging.getLogger(__name__)


class PublishUnavailable(Exception):
    """Kafka did not acknowledge in time (down, or slower than the bound). Safe to retry:
    the same event_id published twice is one event downstream."""


class EventProducer:
    def __init__(
        self, bootstrap_servers: str, *, client_id: str, send_timeout: float = 5.0, topic_prefix: str = ""
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.client_id = client_id
        self.send_timeout = send_timeout
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._stopping: set[asyncio.Task] = set()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,  # tiny batching window: many concurrent requests share one produce call
            max_batch_size=256 * 1024,
            max_request_size=1024 * 1024,
            request_timeout_ms=max(int(self.send_timeout * 1000), 1000),
        )

    async def start(self) -> None:
        """Connect; raises PublishUnavailable when the broker cannot be reached in time."""
        await self._ready()

    async def _connect(self) -> AIOKafkaProducer:
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self.send_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            self._stop_in_background(producer)
            raise PublishUnavailable(f"cannot connect to Kafka: {exc!r}") from exc
        return producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._starting:  # concurrent requests share one connection attempt
                if self._producer is None:
                    self._producer = await self._connect()
        return self._producer

    def _discard(self, producer: AIOKafkaProducer) -> None:
        """Replace a producer that failed. After an outage aiokafka's idempotent producer can
        be left with broken sequence numbers (OutOfOrderSequenceNumber on every later send);
        a new producer gets a new producer id and starts clean. Unacknowledged events were
        answered with 503, and their retries carry the same event_ids."""
        if self._producer is producer:
            self._producer = None
            self._stop_in_background(producer)

    def _stop_in_background(self, producer: AIOKafkaProducer) -> None:
        # stop() flushes, which can wait on a dead broker: never on a request's path.
        task = asyncio.get_running_loop().create_task(asyncio.wait_for(producer.stop(), 30))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def publish(self, topic: Topic, event: Envelope) -> None:
        await self.publish_many(topic, [event])

    async def publish_many(self, topic: Topic, events: Sequence[Envelope]) -> None:
        """Send all, then wait until the broker acknowledged every one (acks=all)."""
        await self.publish_raw(topic.name, [(e.key.encode(), e.to_bytes()) for e in events])

    async def publish_raw(
        self,
        topic_name: str,
        messages: Sequence[tuple[bytes | None, bytes]],
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send to a topic by its logical name (the configured prefix is added here)."""
        try:
            await asyncio.wait_for(self._send_all(self.topic_prefix + topic_name, messages, headers), self.send_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("kafka publish failed", extra={"topic": topic_name, "error": repr(exc)})
            raise PublishUnavailable(f"Kafka did not acknowledge within {self.send_timeout}s") from exc

    async def _send_all(
        self,
        topic_name: str,
        messages: Sequence[tuple[bytes | None, bytes]],
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> None:
        producer = await self._ready()
        try:
            pending = [
                await producer.send(topic_name, value=value, key=key, headers=list(headers or ()))
                for key, value in messages
            ]
            await asyncio.gather(*pending)
        except (asyncio.CancelledError, KafkaError, OSError):
            self._discard(producer)  # cancelled = our outer timeout fired: the broker is away or slow
            raise

    async def check(self) -> bool:
        """Readiness: can we fetch cluster metadata right now?"""
        try:
            producer = await self._ready()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), self.send_timeout)
            return True
        except Exception:  # readiness reports, it never raises
            return False
