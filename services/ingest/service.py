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
