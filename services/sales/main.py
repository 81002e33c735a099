"""The sales service: `uvicorn --factory services.sales.main:build_app --port 8003`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.app import ServiceSpec, create_app
from shared.topics import LEAD_EVENTS

from .api import router
from .handlers import build_handlers
from .settings import SalesSettings


def build_app(settings: SalesSettings | None = None) -> FastAPI:
    settings = settings or SalesSettings()
    settings.require("database_url", "api_tokens")  # outside EMBUDO_ENV=dev there is no default token
    settings.objections  # noqa: B018 - a broken vocabulary file stops start-up here
    return create_app(
        ServiceSpec(
            name="sales",
            settings=settings,
            routers=[router],
            migrations=Path(__file__).parent / "migrations",
            consumes=[LEAD_EVENTS],
            handlers=build_handlers(settings.currency, settings.stage_probabilities),
            uses_outbox=True,
        )
    )
