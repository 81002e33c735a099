"""Metrics: projects page views, campaign, lead and deal events into KPIs; serves the API and dashboard.

`uvicorn --factory services.metrics.main:build_app --port 8004`
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.app import ServiceSpec, create_app
from shared.topics import CAMPAIGN_EVENTS, DEAL_EVENTS, LEAD_EVENTS, PAGE_VIEWS

from .api import install_dashboard, router
from .handlers import HANDLERS, IGNORED
from .settings import MetricsSettings


def build_app(settings: MetricsSettings | None = None) -> FastAPI:
    settings = settings or MetricsSettings()
    settings.require("api_tokens")
    return create_app(
        ServiceSpec(
            name="metrics",
            settings=settings,
            routers=[router],
            migrations=Path(__file__).parent / "migrations",
            consumes=[PAGE_VIEWS, CAMPAIGN_EVENTS, LEAD_EVENTS, DEAL_EVENTS],
            handlers=HANDLERS,
            ignores=IGNORED,
            extra_routes=lambda app: install_dashboard(app, settings),
        )
    )
