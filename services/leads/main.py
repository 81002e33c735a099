"""The leads service: `uvicorn --factory services.leads.main:build_app --port 8002`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.app import ServiceSpec, create_app
from shared.topics import DEAL_EVENTS, FORM_SUBMISSIONS, PAGE_VIEWS

from .api import router
from .handlers import IGNORED, build_handlers
from .settings import LeadsSettings, load_scoring_rules


def build_app(settings: LeadsSettings | None = None) -> FastAPI:
    settings = settings or LeadsSettings()
    settings.require("database_url", "api_tokens")  # outside EMBUDO_ENV=dev there is no default token
    rules = load_scoring_rules(settings.scoring_config)  # a broken file stops start-up here
    return create_app(
        ServiceSpec(
            name="leads",
            settings=settings,
            routers=[router],
            migrations=Path(__file__).parent / "migrations",
            consumes=[FORM_SUBMISSIONS, PAGE_VIEWS, DEAL_EVENTS],
            handlers=build_handlers(rules, settings.mql_threshold),
            ignores=IGNORED,
            uses_outbox=True,
        )
    )
