"""EMBUDO_* settings of the ingest service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_settings import NoDecode

from shared.settings import DEV_WRITE_KEY, CsvList, ServiceSettings, current_settings, split_csv

# Host names compare case-insensitively: kept lowercased, as a set.
HostSet = Annotated[
    frozenset[str],
    NoDecode,
    BeforeValidator(split_csv),
    AfterValidator(lambda hosts: frozenset(h.lower() for h in hosts)),
]


class IngestSettings(ServiceSettings):
    # Write keys, comma-separated; websites embed them, so they only allow writing events.
    write_keys: CsvList = []
    # Hosts an HTML form's `redirect` may send the visitor to (exact host names).
    allowed_redirect_hosts: HostSet = frozenset()
    # Origins whose pages may POST from the browser ("*" for any).
    cors_origins: CsvList = []
    # Token bucket per write key, counted in events (a batch of 100 costs 100).
    # Generous by default: the limit is there to stop one runaway key, not normal traffic.
    # 0 turns the limit off.
    rate_limit_per_second: float = 25_000.0
    rate_limit_burst: float = 50_000.0
    # How many ingest processes share those limits (replicas × uvicorn workers): each keeps
    # its own buckets and enforces its share, so behind a balancer that spreads requests
    # evenly a key gets the configured rate in all, not that rate times the processes.
    rate_limit_processes: int = Field(default=1, ge=1)
    # Largest event, measured as the JSON published to Kafka.
    max_event_bytes: int = 32 * 1024
    # Retry-After sent with a 503 when Kafka did not acknowledge in time.
    unavailable_retry_after_seconds: int = 5
    # The Segment-compatible surface (/segment/v1/...): `track` events that are form
    # submissions (names compared ignoring case and surrounding spaces), and Segment's
    # limits, measured after decompression: one message, and one batch request.
    segment_form_events: CsvList = ["Form Submitted", "Signed Up"]
    segment_max_message_bytes: int = 32 * 1024
    segment_max_batch_bytes: int = 500 * 1024

    @model_validator(mode="after")
    def _dev_write_key(self) -> IngestSettings:
        if not self.write_keys and self.env == "dev":
            self.write_keys = [DEV_WRITE_KEY]
        return self


Settings = Annotated[IngestSettings, Depends(current_settings)]
