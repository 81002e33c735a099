"""One settings object per service, read from EMBUDO_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Only accepted when EMBUDO_ENV=dev (what `make dev` sets); anywhere else a service
# refuses to start without keys of its own.
DEV_WRITE_KEY = "dev-write-key"
DEV_API_TOKEN = "dev-api-token"


def split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBUDO_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "prod"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
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
    # Comma-separated bearer tokens for the service's API (not used by ingest).
    api_tokens: str = ""

    @property
    def api_token_list(self) -> list[str]:
        return split_csv(self.api_tokens)

    @model_validator(mode="after")
    def _dev_api_token(self) -> ServiceSettings:
        if not self.api_tokens and self.env == "dev":
            self.api_tokens = DEV_API_TOKEN
        return self

    def require(self, *names: str) -> None:
        """Fail start-up with one clear message when required settings are empty."""
        missing = [f"EMBUDO_{n.upper()}" for n in names if not getattr(self, n)]
        if missing:
            raise SystemExit(f"missing settings: {', '.join(missing)} (dev credentials only work with EMBUDO_ENV=dev)")
