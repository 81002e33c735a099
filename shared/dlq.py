"""Look at and replay what the consumers parked on their dead-letter topics.

    python -m shared.dlq list [--group G] [--json]
    python -m shared.dlq show --group G --offset N
    python -m shared.dlq replay --group G (--offset N [N ...] | --all)

A consumer group parks a message on `embudo.<group>.dlq.v1` when it cannot parse it or its
handler failed EMBUDO_MAX_HANDLER_ATTEMPTS times (shared/consumer.py). Replaying publishes
the original key and value to the topic named in the `source_topic` header; the group's
consumer then sees the message as if it were new. That is safe because consumers skip an
event_id they have already processed (processed_events). Kafka cannot delete one message
from a topic, so a replayed message stays on the DLQ and `list` keeps showing it.

The DLQ is read by a consumer without a group (partitions assigned, read from the
beginning to the end offsets), so looking never commits or moves anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.events import Envelope
from shared.kafka import EventProducer, PublishUnavailable
from shared.settings import ServiceSettings
from shared.topics import CONSUMER_GROUPS, dead_letter_topic


class NoSuchTopic(Exception):
    """The group has no dead-letter topic in this namespace (wrong group or prefix?)."""


@dataclass(frozen=True)
class Parked:
    """One message on a dead-letter topic, with the headers the consumer parked it with."""

    group: str
    dlq_topic: str
    offset: int  # on the DLQ
    key: bytes | None
    value: bytes | None  # None when the source message was a tombstone
    headers: dict[str, str]

    @property
    def source_topic(self) -> str:
        return self.headers.get("source_topic", "")

    def header_int(self, name: str) -> int | None:
        try:
            return int(self.headers[name])
        except (KeyError, ValueError):
            return None

    def envelope(self) -> Envelope | None:
        try:
            return Envelope.from_bytes(self.value)
        except Exception:  # any reason at all: the summary just says "unparseable"
            return None

    def summary(self) -> dict[str, object]:
        """One line's worth: where it came from, why it was parked, which event it is."""
        event = self.envelope()
        error = self.headers.get("error", "")
        return {
            "group": self.group,
            "dlq_offset": self.offset,
            "source_topic": self.source_topic,
            "source_partition": self.header_int("partition"),
            "source_offset": self.header_int("offset"),
            "attempts": self.header_int("attempts"),
            "error": error.splitlines()[0] if error else "",
            "event_type": event.type if event else "unparseable",
            "event_id": str(event.event_id) if event else None,
        }


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", errors="replace")


async def _partitions(settings: ServiceSettings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="embudo-dlq")
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise NoSuchTopic(f"{topic} does not exist")
    return sorted(p["partition"] for p in described["partitions"])


def dlq_name(settings: ServiceSettings, group: str) -> str:
    return settings.topic_prefix + dead_letter_topic(group).name


async def read_parked(settings: ServiceSettings, group: str) -> list[Parked]:
    """Every message on the group's DLQ, oldest first."""
    topic = dlq_name(settings, group)
    # Asked before the consumer starts: aiokafka 0.14 fails to stop a group-less consumer
    # that never had partitions assigned (CancelledError from stop()).
    partitions = await _partitions(settings, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id="embudo-dlq",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        parked: list[Parked] = []
        pending = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for records in batches.values():
                parked.extend(
                    Parked(
                        group=group,
                        dlq_topic=topic,
                        offset=r.offset,
                        key=r.key,
                        value=r.value,
                        headers={name: _text(value) for name, value in r.headers},
                    )
                    for r in records
                    if r.offset < ends[TopicPartition(r.topic, r.partition)]
                )
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return sorted(parked, key=lambda p: p.offset)
    finally:
        await consumer.stop()


async def replay(settings: ServiceSettings, messages: Sequence[Parked]) -> None:
    """Publish each message's original key and value to its source topic (acks=all)."""
    # No topic prefix here: the source_topic header already is the full name, prefix included.
    producer = EventProducer(
        settings.kafka_bootstrap_servers, client_id="embudo-dlq", send_timeout=settings.kafka_send_timeout_seconds
    )
    await producer.start()
    try:
        for message in messages:
            if not message.source_topic:
                raise ValueError(f"{message.dlq_topic} offset {message.offset} has no source_topic header")
            # The same key lands on the same partition as the original (same partitioner),
            # so the replayed event keeps its place in its key's order.
            await producer.publish_raw(message.source_topic, [(message.key, message.value)])
    finally:
        await producer.stop()


def describe(message: Parked) -> str:
    """The whole message, for `show`: key, every header, the value (pretty when JSON)."""
    lines = [f"{message.dlq_topic} offset {message.offset}", f"key: {_text(message.key)}", "headers:"]
    lines += [f"  {name}: " + value.replace("\n", "\n    ") for name, value in message.headers.items()]
    value = _text(message.value)
    try:
        value = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except ValueError:
        pass  # not JSON: shown as it is
    lines += ["value:", value]
    return "\n".join(lines)


def summary_line(summary: dict[str, object]) -> str:
    where = f"{summary['source_topic']}[{summary['source_partition']}]@{summary['source_offset']}"
    event = summary["event_type"] if summary["event_id"] is None else f"{summary['event_type']} {summary['event_id']}"
    return f"  {summary['dlq_offset']:>6}  {where}  attempts={summary['attempts']}  {event}  {summary['error']}"


def select(parked: Sequence[Parked], offsets: Sequence[int]) -> list[Parked]:
    by_offset = {p.offset: p for p in parked}
    missing = sorted(set(offsets) - set(by_offset))
    if missing:
        raise LookupError(f"no message at offset {', '.join(map(str, missing))} (see `list`)")
    return [by_offset[o] for o in sorted(set(offsets))]


async def run(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    if args.command == "list":
        for group in [args.group] if args.group else CONSUMER_GROUPS:
            try:
                parked = await read_parked(settings, group)
            except NoSuchTopic as exc:
                if not args.json:
                    print(f"{group}: {exc}", file=out)
                continue
            if not args.json:
                print(f"{group}: {len(parked)} parked on {dlq_name(settings, group)}", file=out)
            for message in parked:
                summary = message.summary()
                print(json.dumps(summary) if args.json else summary_line(summary), file=out)
        return 0

    parked = await read_parked(settings, args.group)
    if args.command == "show":
        [message] = select(parked, [args.offset])
        print(describe(message), file=out)
        return 0

    chosen = parked if args.all else select(parked, args.offset)
    await replay(settings, chosen)
    for message in chosen:
        print(f"replayed {message.dlq_topic} offset {message.offset} to {message.source_topic}", file=out)
    print(f"{len(chosen)} replayed; they stay on the DLQ (Kafka cannot remove them)", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.dlq",
        description="List, show and replay the messages the consumer groups parked on their dead-letter topics "
        "(embudo.<group>.dlq.v1). Reads EMBUDO_KAFKA_BOOTSTRAP_SERVERS and EMBUDO_TOPIC_PREFIX.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="the parked messages of each consumer group")
    listing.add_argument("--group", help=f"one consumer group (default: {', '.join(CONSUMER_GROUPS)})")
    listing.add_argument("--json", action="store_true", help="one JSON object per message")

    show = commands.add_parser("show", help="one parked message in full: headers and value")
    show.add_argument("--group", required=True)
    show.add_argument("--offset", type=int, required=True, help="its offset on the DLQ (from `list`)")

    replaying = commands.add_parser(
        "replay",
        help="publish parked messages back to their source topic (safe: consumers dedupe by event_id)",
        description="Publish the selected messages' original key and value to their source_topic, after the "
        "cause is fixed. Safe to repeat: consumers skip an event_id they already processed (processed_events). "
        "A replayed message stays on the DLQ and `list` keeps showing it; nothing marks it as replayed.",
    )
    replaying.add_argument("--group", required=True)
    which = replaying.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", type=int, nargs="+", action="extend", help="DLQ offsets (from `list`)")
    which.add_argument("--all", action="store_true", help="every message on the group's DLQ")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, ServiceSettings(), sys.stdout))
    except (NoSuchTopic, LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, PublishUnavailable) as exc:  # a replay cut short can simply be run again
        print(f"error: Kafka: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
