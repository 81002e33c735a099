"""EMBUDO_* settings of the metrics service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from pydantic import field_validator

from shared.settings import ServiceSettings, current_settings

from .domain import TIME_ZONES


class MetricsSettings(ServiceSettings):
    # How often the dashboard page polls the API (it sends If-None-Match, so an unchanged
    # state costs one tiny query).
    dashboard_poll_seconds: float = 5.0
    # Upper bound on /v1/kpis/timeseries buckets: each bucket is a full KPI computation.
    max_timeseries_buckets: int = 366
    # The IANA time zone of the `tz` a metrics request leaves out: where a date means local
    # midnight and timeseries buckets are local days, weeks and months.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        if name not in TIME_ZONES:
            raise ValueError(f"EMBUDO_TIMEZONE: unknown IANA time zone {name!r} (e.g. Europe/Madrid, UTC)")
        return name


Settings = Annotated[MetricsSettings, Depends(current_settings)]
