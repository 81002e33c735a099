"""One settings object per service, read from EMBUDO_* environment variables once, at start-up.

A service's settings class extends `ServiceSettings`; routes get it through the service's
`Settings` dependency (`Annotated[..., Depends(current_settings)]`), never from app state.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import Annotated, Literal

from fastapi import Request
from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.auth import ApiToken, parse_api_tokens
from shared.rules import CLOCK_SKEW

# Only accepted when EMBUDO_ENV=dev (what `make dev` sets); anywhere else a service
# refuses to start without keys of its own.
DEV_WRITE_KEY = "dev-write-key"
DEV_API_TOKEN = "dev-api-token"


def split_csv(value: object) -> object:
    """'a, b,,c' -> ['a', 'b', 'c']; lists pass through (settings built in code)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A comma-separated environment variable, parsed into a list once.
CsvList = Annotated[list[str], NoDecode, BeforeValidator(split_csv)]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBUDO_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "prod"
    log_level: str = "INFO"
    currency: str = "EUR"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_replication_factor: int = 1
    # Prepended to every topic name: isolates test runs or tenants sharing one cluster.
    topic_prefix: str = ""
    # Consumer group; empty means the service's name. Replicas of a service share it.
    consumer_group: str = ""
    # Bound on every Kafka send: aiokafka's idempotent send can wait forever on a dead broker.
    kafka_send_timeout_seconds: float = 5.0
    database_url: str = ""
    db_pool_size: int = 10
    max_request_bytes: int = 512 * 1024
    # Consumer: attempts before a failing message goes to the dead-letter topic.
    max_handler_attempts: int = 3
    # Consumer dedupe rows (processed_events) are kept this long, then pruned; 0 keeps them
    # forever. An event redelivered after it (a client retrying with a 30-day-old event_id)
    # is applied again: docs/operations.md.
    processed_events_retention_days: float = Field(default=30, ge=0)
    # Bearer tokens for the service's API (not used by ingest): name:token:scopes entries,
    # comma-separated, scopes read, write, privacy (shared/auth.py).
    api_tokens: CsvList = []
    # How far ahead of our clock a client's timestamp may be before it is "in the future".
    clock_skew_seconds: float = Field(default=CLOCK_SKEW.total_seconds(), ge=0)
    # How long sales has to accept or reject a handoff (a deal opened by a lead reaching SQL)
    # before it is overdue: the handoff SLA sales is measured on and metrics reports.
    sla_accept_hours: float = Field(default=24, gt=0)

    @property
    def clock_skew(self) -> timedelta:
        return timedelta(seconds=self.clock_skew_seconds)

    @property
    def sla_accept(self) -> timedelta:
        return timedelta(hours=self.sla_accept_hours)

    @property
    def keep_processed_for(self) -> timedelta | None:
        days = self.processed_events_retention_days
        return timedelta(days=days) if days else None

    @model_validator(mode="after")
    def _dev_api_token(self) -> ServiceSettings:
        if not self.api_tokens and self.env == "dev":
            self.api_tokens = [f"dev:{DEV_API_TOKEN}:read", "write", "privacy"]
        parse_api_tokens(self.api_tokens)  # a malformed entry stops start-up here
        return self

    @cached_property
    def tokens(self) -> tuple[ApiToken, ...]:
        return parse_api_tokens(self.api_tokens)

    def require(self, *names: str) -> None:
        """Fail start-up with one clear message when required settings are empty."""
        missing = [f"EMBUDO_{n.upper()}" for n in names if not getattr(self, n)]
        if missing:
            raise SystemExit(f"missing settings: {', '.join(missing)} (dev credentials only work with EMBUDO_ENV=dev)")


# Async on purpose: FastAPI runs plain-def dependencies in a thread pool on every request.
async def current_settings(request: Request) -> ServiceSettings:
    """The settings the app was built with; each service annotates it with its own class."""
    return request.app.state.settings
