"""The consumer runtime every service uses: Kafka in, one handler per event type, Postgres out.

Safety comes from the `processed_events` table: an event's row there and its handler's
writes (outbox rows included) commit in one transaction, so a redelivered or replayed
event is recognised by its event_id and skipped. Offsets are committed to Kafka only
after that transaction, which makes them an optimisation, never the source of truth.

Handlers are registered by event model (`{DealWon: on_deal_won}`) and receive the typed
payload (`event: Envelope[DealWon]`). The consumer refuses to start when a handler's event
type is not carried by a topic it consumes, or when a consumed topic carries a type that
is neither handled nor listed in `ignores`: a forgotten or misplaced handler is a start-up
error, not events silently dropped.

A batch fetched from one partition is applied in a single transaction (fast). If it
fails, each event is retried on its own: infrastructure errors (database or broker
unreachable) are retried until they pass, other errors up to `max_attempts` times, then
the message is parked on the group's dead-letter topic with its error and the
partition moves on. Stopping while an outage is being waited out parks nothing: the
records in hand stay uncommitted and are redelivered to the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge

from shared.db import DATABASE_UNAVAILABLE
from shared.events import Envelope, EventData
from shared.kafka import EventProducer, PublishUnavailable
from shared.topics import Topic, dead_letter_topic
from shared.uow import UnitOfWork

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, UnitOfWork], Awaitable[None]]
Handlers = Mapping[type[EventData], Handler]


class HandlerMismatch(Exception):
    """The handlers and the consumed topics do not fit together (raised at start-up)."""


def declared_types(handler: Handler) -> set[type[EventData]]:
    """The payload types a handler's first parameter declares: `Envelope[A]` or `Envelope[A | B]`."""
    target = getattr(handler, "func", handler)  # functools.partial
    hints = typing.get_type_hints(target)
    first = next(iter(target.__code__.co_varnames[: target.__code__.co_argcount]), None)
    annotation = hints.get(first) if first else None
    args = getattr(annotation, "__pydantic_generic_metadata__", {}).get("args", ())
    declared: set[type[EventData]] = set()
    for arg in args:
        declared.update(typing.get_args(arg) or (arg,))
    return declared


def check_handlers(topics: Collection[Topic], handlers: Handlers, ignores: Collection[type[EventData]]) -> None:
    carried = {event_type for topic in topics for event_type in topic.event_types}
    problems = []
    for event_type, handler in handlers.items():
        if event_type not in carried:
            problems.append(f"{event_type.__name__} is handled but no consumed topic carries it")
        if event_type not in declared_types(handler):
            name = getattr(handler, "func", handler).__name__
            problems.append(f"{name} is registered for {event_type.__name__} but does not declare it")
    for event_type in carried - set(handlers) - set(ignores):
        problems.append(f"{event_type.__name__} arrives on a consumed topic but is neither handled nor ignored")
    for event_type in set(handlers) & set(ignores):
        problems.append(f"{event_type.__name__} is both handled and ignored")
    if problems:
        raise HandlerMismatch("; ".join(problems))


# Errors that say "the world is down", not "this message is bad": retry without limit.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    *DATABASE_UNAVAILABLE,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    PublishUnavailable,
)


class Interrupted(Exception):
    """stop() arrived while an outage was being waited out: the records in hand are left
    uncommitted, to be redelivered, rather than counted as failures of their own."""


class UnexpectedEvent(Exception):
    """An event of a type its topic does not carry: parked, like any poison message."""


EVENTS_PROCESSED = Counter("embudo_events_processed_total", "Events applied", ["group", "type"])
EVENTS_DUPLICATE = Counter("embudo_events_duplicate_total", "Events skipped as already processed", ["group"])
EVENTS_DEAD_LETTERED = Counter("embudo_events_dead_lettered_total", "Events parked on the DLQ", ["group"])
CONSUMER_LAG = Gauge(
    "embudo_consumer_lag",
    "Messages on a partition this replica owns that its group has not processed yet (high watermark - position)",
    ["group", "topic", "partition"],
)
PROCESSED_EVENTS_PRUNED = Counter(
    "embudo_processed_events_pruned_total", "Dedupe rows deleted past their retention", ["group"]
)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, group: str) -> None:
        self.group = group

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Nothing in flight to flush: batches are applied and committed before the next poll.
        log.info("partitions revoked", extra={"group": self.group, "partitions": sorted(map(str, revoked))})
        for tp in revoked:  # another replica reports these now
            try:
                CONSUMER_LAG.remove(self.group, tp.topic, str(tp.partition))
            except KeyError:
                pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"group": self.group, "partitions": sorted(map(str, assigned))})


class EventConsumer:
    def __init__(
        self,
        *,
        group: str,
        topics: list[Topic],
        handlers: Handlers,
        ignores: Collection[type[EventData]] = (),
        pool: asyncpg.Pool,
        producer: EventProducer,
        bootstrap_servers: str,
        topic_prefix: str = "",
        max_attempts: int = 3,
        max_batch: int = 500,
        keep_processed_for: timedelta | None = None,
    ) -> None:
        check_handlers(topics, handlers, ignores)
        self.group = group
        self.topics = topics
        self.handlers = handlers
        self.ignores = frozenset(ignores)
        self.pool = pool
        self.producer = producer
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.max_attempts = max_attempts
        self.max_batch = max_batch
        self.dead_letter = dead_letter_topic(group)
        self.keep_processed_for = keep_processed_for
        self._next_prune = 0.0
        self._stopping = asyncio.Event()
        self.finished = asyncio.Event()  # set whenever run() is not running
        self.finished.set()

    async def run(self) -> None:
        """Consume until stop() is called."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group,
            client_id=f"embudo-{self.group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_batch,
        )
        self.finished.clear()
        try:
            await consumer.start()
            consumer.subscribe([self.topic_prefix + t.name for t in self.topics], listener=_Rebalance(self.group))
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                for tp, records in batches.items():
                    await self.process(records)
                    try:
                        await consumer.commit({tp: records[-1].offset + 1})
                    except (CommitFailedError, KafkaError) as exc:
                        # Partition moved during a rebalance: the next owner re-reads these
                        # records and processed_events makes that harmless.
                        log.warning("offset commit failed", extra={"group": self.group, "error": repr(exc)})
                await self._report_lag(consumer)
                await self._prune_when_due()
        except Interrupted:
            log.info("stopped during an outage; uncommitted records will be redelivered", extra={"group": self.group})
        finally:
            await consumer.stop()
            self.finished.set()

    def stop(self) -> None:
        self._stopping.set()

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per owned partition from what the last fetch learned (no extra request)."""
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # nothing fetched from it yet
            position = await consumer.position(tp)
            CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(max(0, highwater - position))

    async def _prune_when_due(self) -> None:
        """Delete dedupe rows older than the retention, at most every ten minutes and a
        bounded number at a time: the table would otherwise grow with every event forever."""
        if self.keep_processed_for is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 600
        try:
            while True:
                deleted = await self.pool.fetchval(
                    """WITH old AS (
                           SELECT event_id FROM processed_events
                           WHERE processed_at < now() - $1::interval LIMIT 10000
                       ), gone AS (
                           DELETE FROM processed_events p USING old WHERE p.event_id = old.event_id RETURNING 1
                       )
                       SELECT count(*) FROM gone""",
                    self.keep_processed_for,
                )
                PROCESSED_EVENTS_PRUNED.labels(self.group).inc(deleted)
                if deleted < 10000 or self._stopping.is_set():
                    return
        except TRANSIENT_ERRORS as exc:  # the next round tries again
            log.warning("pruning processed_events failed", extra={"group": self.group, "error": repr(exc)})

    async def process(self, records: list[ConsumerRecord]) -> None:
        """Apply one partition's batch; returns when every record is applied, skipped or parked."""
        decoded: list[tuple[ConsumerRecord, Envelope]] = []
        for record in records:
            try:
                event = Envelope.from_bytes(record.value)
            except Exception as exc:  # unparseable: no retry can help
                await self._park(record, exc, attempts=1)
                continue
            decoded.append((record, event))
        if not decoded:
            return
        try:
            await self._retry_transient(lambda: self._apply(decoded))
        except Interrupted:
            raise
        except Exception:
            log.warning("batch failed, applying its events one by one", extra={"group": self.group})
            for record, event in decoded:
                await self._apply_alone(record, event)

    async def _apply_alone(self, record: ConsumerRecord, event: Envelope) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._retry_transient(lambda: self._apply([(record, event)]))
                return
            except Interrupted:
                raise
            except Exception as exc:
                if attempt == self.max_attempts:
                    await self._park(record, exc, attempts=attempt)
                    return
                await asyncio.sleep(0.05 * attempt)

    async def _retry_transient(self, operation: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                return await operation()
            except TRANSIENT_ERRORS as exc:
                if self._stopping.is_set():
                    raise Interrupted from exc
                log.warning("transient failure, retrying", extra={"group": self.group, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _apply(self, batch: list[tuple[ConsumerRecord, Envelope]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """INSERT INTO processed_events (event_id, event_type, topic, kafka_partition, kafka_offset)
                   SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])
                   ON CONFLICT (event_id) DO NOTHING
                   RETURNING event_id""",
                [e.event_id for _, e in batch],
                [e.type for _, e in batch],
                [r.topic for r, _ in batch],
                [r.partition for r, _ in batch],
                [r.offset for r, _ in batch],
            )
            new_ids = {row["event_id"] for row in rows}
            uow = UnitOfWork(conn)
            for record, event in batch:
                if event.event_id not in new_ids:
                    EVENTS_DUPLICATE.labels(self.group).inc()
                    continue
                new_ids.discard(event.event_id)  # the same id twice in one batch applies once
                handler = self.handlers.get(type(event.data))
                if handler is not None:
                    await handler(event, uow)
                    EVENTS_PROCESSED.labels(self.group, event.type).inc()
                elif type(event.data) not in self.ignores:  # a valid event on the wrong topic
                    raise UnexpectedEvent(f"{event.type} does not belong on {record.topic}")
            await uow.flush()

    async def _park(self, record: ConsumerRecord, error: BaseException, attempts: int) -> None:
        headers = [
            ("error", repr(error)[:2000].encode()),
            ("source_topic", record.topic.encode()),
            ("partition", str(record.partition).encode()),
            ("offset", str(record.offset).encode()),
            ("attempts", str(attempts).encode()),
        ]
        log.error(
            "parking message on the dead-letter topic",
            extra={"group": self.group, "topic": record.topic, "offset": record.offset, "error": repr(error)},
        )
        await self._retry_transient(
            lambda: self.producer.publish_raw(self.dead_letter.name, [(record.key, record.value)], headers)
        )
        EVENTS_DEAD_LETTERED.labels(self.group).inc()
