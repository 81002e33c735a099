"""EMBUDO_* settings of the ingest service."""

from __future__ import annotations

from pydantic import model_validator

from shared.settings import DEV_WRITE_KEY, ServiceSettings, split_csv


class IngestSettings(ServiceSettings):
    port: int = 8001
    # Comma-separated write keys; websites embed them, so they only allow writing events.
    write_keys: str = ""
    # Hosts an HTML form's `redirect` may send the visitor to (exact host names).
    allowed_redirect_hosts: str = ""
    # Origins whose pages may POST from the browser ("*" for any).
    cors_origins: str = ""
    # Token bucket per write key, counted in events (a batch of 100 costs 100).
    # Generous by default: the limit is there to stop one runaway key, not normal traffic
    # (one process handles ~20k events/s). 0 turns the limit off.
    rate_limit_per_second: float = 25_000.0
    rate_limit_burst: float = 50_000.0
    # Largest event, measured as the JSON published to Kafka.
    max_event_bytes: int = 32 * 1024
    # Retry-After sent with a 503 when Kafka did not acknowledge in time.
    unavailable_retry_after_seconds: int = 5

    @model_validator(mode="after")
    def _dev_write_key(self) -> IngestSettings:
        if not self.write_keys and self.env == "dev":
            self.write_keys = DEV_WRITE_KEY
        return self

    @property
    def write_key_list(self) -> list[str]:
        return split_csv(self.write_keys)

    @property
    def redirect_hosts(self) -> frozenset[str]:
        return frozenset(host.lower() for host in split_csv(self.allowed_redirect_hosts))

    @property
    def cors_origin_list(self) -> list[str]:
        return split_csv(self.cors_origins)
