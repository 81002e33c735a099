"""The ingest use case: accept a request's valid items as events on their topics.

Ingest keeps no database: its only store is Kafka. Events are published directly (no
outbox) and a request is answered only once the broker acknowledged all of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from shared.errors import RateLimited, TooLarge
from shared.kafka import EventProducer, PublishUnavailable

from . import store
from .domain import AnyInput, RateLimiter, to_envelope
from .segment_mapping import MessageMapper, Outcome


class NotAcknowledged(Exception):
    """Kafka did not acknowledge in time; the client retries with these event_ids."""

    def __init__(self, event_ids: list[str]) -> None:
        super().__init__("not acknowledged")
        self.event_ids = event_ids


async def accept(
    items: Sequence[AnyInput],
    *,
    write_key: str,
    producer: EventProducer,
    limiter: RateLimiter,
    max_event_bytes: int,
    now: datetime,
) -> list[str]:
    """Turn valid items into events and publish them all; returns their event_ids once
    Kafka acknowledged every one."""
    prepared: list[store.Prepared] = []
    event_ids: list[str] = []
    too_large: list[int] = []
    for index, item in enumerate(items):
        topic, envelope = to_envelope(item, now)
        value = envelope.to_bytes()
        if len(value) > max_event_bytes:
            too_large.append(index)
        prepared.append((topic, envelope.key.encode(), value))
        event_ids.append(str(envelope.event_id))
    if too_large:
        raise TooLarge(
            f"An event may be at most {max_event_bytes} bytes as published.", title="Event too large", items=too_large
        )
    wait = limiter.take(write_key, len(prepared), time.monotonic())
    if wait:
        raise RateLimited("Rate limit for this write key exceeded.", retry_after=wait)
    try:
        await store.publish(producer, prepared)
    except PublishUnavailable:
        raise NotAcknowledged(event_ids) from None
    return event_ids


async def accept_messages(
    messages: Sequence[object],
    mapper: MessageMapper,
    *,
    producer: EventProducer,
    limiter: RateLimiter,
    max_event_bytes: int,
) -> list[Outcome]:
    """The Segment-compatible surface's use case: map each message, publish those that
    became events, and tell what became of every one. Lenient where `accept` is all or
    nothing: a message that cannot be mapped, or whose event would be too large, is skipped
    and the others are published. Returns once Kafka acknowledged every event."""
    # Every message costs, published or not: a flood of ignored ones is load all the same.
    wait = limiter.take(mapper.write_key, max(1, len(messages)), time.monotonic())
    if wait:
        raise RateLimited("Rate limit for this write key exceeded.", retry_after=wait)
    outcomes = [mapper.map(message) for message in messages]
    prepared: list[store.Prepared] = []
    event_ids: list[str] = []
    for index, outcome in enumerate(outcomes):
        if outcome.input is None:
            continue
        topic, envelope = to_envelope(outcome.input, mapper.received_at)
        value = envelope.to_bytes()
        if len(value) > max_event_bytes:
            outcomes[index] = outcome.skip("too_large")
            continue
        prepared.append((topic, envelope.key.encode(), value))
        event_ids.append(str(envelope.event_id))
    if prepared:
        try:
            await store.publish(producer, prepared)
        except PublishUnavailable:
            raise NotAcknowledged(event_ids) from None
    return outcomes
