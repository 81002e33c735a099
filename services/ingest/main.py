"""The ingest service: `uvicorn --factory services.ingest.main:build_app --port 8001`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from shared.app import ServiceSpec, create_app

from .api import router
from .domain import RateLimiter
from .segment import router as segment_router
from .settings import IngestSettings


def build_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    settings.require("write_keys")  # outside EMBUDO_ENV=dev there is no default key
    app = create_app(ServiceSpec(name="ingest", settings=settings, routers=[router, segment_router]))
    share = settings.rate_limit_processes
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second / share, settings.rate_limit_burst / share)
    if settings.cors_origins:
        # Outermost, so a browser's preflight is answered before anything else runs.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    return app
