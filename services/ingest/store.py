"""Publishing to Kafka: ingest's only store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shared.kafka import EventProducer
from shared.topics import Topic

# (topic, key, serialised envelope): serialised once, by the caller, who also measured it.
Prepared = tuple[Topic, bytes, bytes]


async def publish(producer: EventProducer, events: Sequence[Prepared]) -> None:
    """Publish to each topic in one batched send; returns when acks=all came back for every
    event. Raises shared.kafka.PublishUnavailable when Kafka does not answer in time."""
    by_topic: dict[str, list[tuple[bytes, bytes]]] = {}
    for topic, key, value in events:
        by_topic.setdefault(topic.name, []).append((key, value))
    if len(by_topic) == 1:
        [(name, messages)] = by_topic.items()
        await producer.publish_raw(name, messages)
        return
    # A mixed batch: both topics at once, and every outcome collected before raising.
    outcomes = await asyncio.gather(
        *(producer.publish_raw(name, messages) for name, messages in by_topic.items()), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
