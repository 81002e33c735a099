"""EMBUDO_* settings of the metrics service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from shared.settings import ServiceSettings, current_settings


class MetricsSettings(ServiceSettings):
    # How often the dashboard page polls the API (it sends If-None-Match, so an unchanged
    # state costs one tiny query).
    dashboard_poll_seconds: float = 5.0
    # Upper bound on /v1/kpis/timeseries buckets: each bucket is a full KPI computation.
    max_timeseries_buckets: int = 366


Settings = Annotated[MetricsSettings, Depends(current_settings)]
