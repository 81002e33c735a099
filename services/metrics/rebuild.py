"""Rebuild the metrics projection from the topics, next to the live one, and switch over.

    python -m services.metrics.rebuild        (or `make rebuild-metrics`), with the service's
                                              EMBUDO_* settings (database, broker, prefix)

The topics keep every event for good, so the projection can always be made again: after a
fix in a handler, a new KPI that needs facts the old projection did not keep, or a damaged
database. The live service keeps consuming and answering throughout.

1. A fresh projection is built in the schema `metrics_rebuild` of the same database (the
   service's migrations applied there), by replaying the metrics topics from their
   beginning with the service's own handlers.
2. It replays up to where the live consumers have got (their `processed_events`, or the
   group's committed offset when that is further), in rounds, until it is close behind.
3. The switch, in one transaction on the live database: writes to the live
   `processed_events` are locked out (every consumer batch begins there, so the live
   projection stands still; reads go on), the rebuild replays exactly up to the live
   position, and the KPIs of a few periods are computed from both. Identical: the live
   schema is renamed `metrics_replaced_<time>`, the rebuilt one becomes `public`, and a
   trigger makes a consumer batch that was waiting on the lock fail as a serialisation
   failure, which the consumer retries into the new schema. Different: nothing switches,
   the difference is printed and the command exits 1, leaving `metrics_rebuild` to look at
   (with --accept-differences it switches all the same, printing the differences: after a
   release whose KPIs need facts the live projection never kept, they are expected).

Shared goals are not projection but state (schema `metrics_state`): a rebuild leaves them be.

Renaming a schema invalidates every cached plan in Postgres, so the service's pooled
connections read and write the new tables from their next statement on; no restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.consumer import EventConsumer
from shared.db import apply_migrations, create_pool
from shared.kafka import EventProducer
from shared.topics import EVENT_TOPICS, Topic, dead_letter_topic, ensure_topics

from . import store
from .domain import Filters, Period, RawAggregates, kpis
from .handlers import HANDLERS, IGNORED
from .settings import MetricsSettings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
REBUILD_SCHEMA = "metrics_rebuild"
# The rebuild parks what it cannot apply on a DLQ of its own: the live consumer has parked
# the same messages already, on the metrics DLQ.
REBUILD_GROUP = "metrics-rebuild"
# Close enough behind the live consumers to switch: the rest is replayed under the lock.
CLOSE_BEHIND = 5_000
MAX_ROUNDS = 5

Positions = dict[TopicPartition, int]


def metrics_topics() -> list[Topic]:
    """What the projection is made of: every topic carrying an event metrics handles."""
    return [topic for topic in EVENT_TOPICS if set(topic.event_types) & set(HANDLERS)]


def comparison_periods(now: datetime) -> dict[str, Period]:
    today = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return {
        "last 7 days": Period(today - timedelta(days=7), today),
        "last 30 days": Period(today - timedelta(days=30), today),
        "last 365 days": Period(today - timedelta(days=365), today),
        "everything": Period(datetime(2000, 1, 1, tzinfo=UTC), today + timedelta(days=1)),
    }


async def kpis_of(
    conn: asyncpg.Connection, periods: dict[str, Period], settings: MetricsSettings, now: datetime
) -> dict[str, dict]:
    """The KPIs of each period as of `now`, as the API computes them (first-touch
    attribution), in a transaction of their own or a savepoint of the caller's."""
    async with conn.transaction(isolation=None if conn.is_in_transaction() else "repeatable_read"):
        report = {}
        for name, period in periods.items():
            groups = await store.kpi_aggregates(
                conn, [period], Filters(), "first_touch", settings.currency, now=now, sla=settings.sla_accept
            )
            report[name] = kpis(groups.get((0, None), RawAggregates()))
        return report


@dataclass
class Replayer:
    """Reads the metrics topics from the beginning, without a consumer group, and applies
    them to the rebuild schema with the service's handlers and dedupe."""

    settings: MetricsSettings
    pool: asyncpg.Pool
    producer: EventProducer
    reader: AIOKafkaConsumer | None = None
    applier: EventConsumer | None = None

    async def start(self) -> None:
        prefix = self.settings.topic_prefix
        topics = metrics_topics()
        await ensure_topics(self.settings.kafka_bootstrap_servers, (dead_letter_topic(REBUILD_GROUP),), prefix=prefix)
        self.applier = EventConsumer(
            group=REBUILD_GROUP,
            topics=topics,
            handlers={t: h for t, h in HANDLERS.items() if any(t in topic.event_types for topic in topics)},
            ignores=IGNORED,
            pool=self.pool,
            producer=self.producer,
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            topic_prefix=prefix,
            max_attempts=self.settings.max_handler_attempts,
        )
        self.reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="embudo-metrics-rebuild",
        )
        await self.reader.start()
        partitions = []
        for topic in topics:
            name = prefix + topic.name
            found = self.reader.partitions_for_topic(name) or set()
            if not found:
                await self.reader._client.force_metadata_update()
                found = self.reader.partitions_for_topic(name) or set()
            partitions += [TopicPartition(name, p) for p in sorted(found)]
        self.reader.assign(partitions)
        await self.reader.seek_to_beginning(*partitions)

    async def stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()

    async def position(self) -> Positions:
        assert self.reader is not None
        return {tp: await self.reader.position(tp) for tp in self.reader.assignment()}

    async def replay_to(self, targets: Positions) -> int:
        """Apply every record before its partition's target; returns how many were read."""
        assert self.reader is not None and self.applier is not None
        read = 0
        while True:
            behind = [tp for tp in self.reader.assignment() if await self.reader.position(tp) < targets.get(tp, 0)]
            if not behind:
                return read
            batches = await self.reader.getmany(*behind, timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                wanted = [r for r in records if r.offset < targets.get(tp, 0)]
                if wanted:
                    await self.applier.process(wanted)
                    read += len(wanted)
                if len(wanted) < len(records):  # read past the target: come back to it next time
                    self.reader.seek(tp, targets.get(tp, 0))


async def live_positions(
    conn: asyncpg.Connection, settings: MetricsSettings, partitions: list[TopicPartition]
) -> Positions:
    """How far the live projection has got on each partition: past the newest event in its
    `processed_events`, or the group's committed offset when that is further (the newest
    messages were parked or duplicates, or old dedupe rows were pruned)."""
    rows = await conn.fetch(
        "SELECT topic, kafka_partition, max(kafka_offset) + 1 AS next FROM processed_events GROUP BY 1, 2"
    )
    positions = {TopicPartition(r["topic"], r["kafka_partition"]): r["next"] for r in rows}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="embudo-metrics-rebuild")
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.consumer_group or "metrics")
    finally:
        await admin.close()
    for tp, meta in committed.items():
        if meta.offset >= 0:
            positions[tp] = max(positions.get(tp, 0), meta.offset)
    return {tp: positions.get(tp, 0) for tp in partitions}


def gap(targets: Positions, at: Positions) -> int:
    return sum(max(0, target - at.get(tp, 0)) for tp, target in targets.items())


SWITCH_GUARD = """
CREATE FUNCTION public.embudo_projection_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this metrics projection was replaced by a rebuild; retry'
        USING ERRCODE = 'serialization_failure';
END
$$;
CREATE TRIGGER projection_replaced BEFORE INSERT ON public.processed_events
    FOR EACH STATEMENT EXECUTE FUNCTION public.embudo_projection_replaced();
"""


@dataclass
class Outcome:
    switched: bool
    before: dict[str, dict]
    after: dict[str, dict]
    replaced_schema: str | None
    events_replayed: int


async def rebuild(settings: MetricsSettings, now: datetime | None = None, accept_differences: bool = False) -> Outcome:
    """Build the projection again from the topics and switch the live service over to it
    (when the KPIs of both agree, or `accept_differences`)."""
    now = now or datetime.now(UTC)
    settings.require("database_url")
    live = await asyncpg.connect(settings.database_url)
    await live.execute(f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE; CREATE SCHEMA {REBUILD_SCHEMA}")
    pool = await create_pool(settings.database_url, max_size=4, search_path=REBUILD_SCHEMA)
    producer = EventProducer(
        settings.kafka_bootstrap_servers,
        client_id="embudo-metrics-rebuild",
        send_timeout=settings.kafka_send_timeout_seconds,
        topic_prefix=settings.topic_prefix,
    )
    replayer = Replayer(settings, pool, producer)
    try:
        await apply_migrations(pool, MIGRATIONS)
        await replayer.start()
        partitions = list(await replayer.position())
        replayed = 0
        for _ in range(MAX_ROUNDS):
            targets = await live_positions(live, settings, partitions)
            replayed += await replayer.replay_to(targets)
            if gap(await live_positions(live, settings, partitions), await replayer.position()) < CLOSE_BEHIND:
                break
            log.info("rebuild: another round to catch up with the live consumers")

        periods = comparison_periods(now)
        async with live.transaction():
            # Consumer batches wait here; the API's reads do not.
            await live.execute("LOCK TABLE public.processed_events IN EXCLUSIVE MODE")
            targets = await live_positions(live, settings, partitions)
            replayed += await replayer.replay_to(targets)
            async with pool.acquire() as rebuilt:
                after = await kpis_of(rebuilt, periods, settings, now)
            before = await kpis_of(live, periods, settings, now)
            if before != after and not accept_differences:
                raise _Mismatch(before, after, replayed)
            replaced = f"metrics_replaced_{now:%Y%m%d%H%M%S}"
            await live.execute(SWITCH_GUARD)
            await live.execute(f"ALTER SCHEMA public RENAME TO {replaced}")
            await live.execute(f"ALTER SCHEMA {REBUILD_SCHEMA} RENAME TO public")
        after_switch = await kpis_of(live, periods, settings, now)
        return Outcome(True, before, after_switch, replaced, replayed)
    except _Mismatch as mismatch:
        return Outcome(False, mismatch.before, mismatch.after, None, mismatch.replayed)
    finally:
        await replayer.stop()
        await producer.stop()
        await pool.close()
        await live.close()


class _Mismatch(Exception):
    def __init__(self, before: dict, after: dict, replayed: int) -> None:
        super().__init__("the rebuilt KPIs differ from the live ones")
        self.before, self.after, self.replayed = before, after, replayed


def print_outcome(outcome: Outcome, out=sys.stdout) -> None:
    print(f"events replayed: {outcome.events_replayed}", file=out)
    for name in outcome.before:
        same = outcome.before[name] == outcome.after[name]
        headline = {k: outcome.after[name][k] for k in ("leads_generated", "revenue", "new_customers", "spend")}
        print(f"{name:>14}: {'identical' if same else 'DIFFERENT'}  {json.dumps(headline)}", file=out)
        if not same:
            for key, live in outcome.before[name].items():
                if live != outcome.after[name][key]:
                    print(f"{'':>16}{key}: live {live} rebuilt {outcome.after[name][key]}", file=out)
    if outcome.switched:
        print(f"switched: the rebuilt projection is live; the old one is schema {outcome.replaced_schema}", file=out)
    else:
        print(f"not switched: the rebuilt projection differs; it stays in schema {REBUILD_SCHEMA}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--accept-differences",
        action="store_true",
        help="switch even when the rebuilt KPIs differ from the live ones (printed)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    outcome = asyncio.run(rebuild(MetricsSettings(), accept_differences=args.accept_differences))
    print_outcome(outcome)
    return 0 if outcome.switched else 1


if __name__ == "__main__":
    raise SystemExit(main())
