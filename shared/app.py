"""Builds a service's FastAPI app: the same wiring, middleware and lifecycle for all four.

A service supplies its settings, routers, migrations folder and, if it consumes, its
topics and handlers. Start-up applies migrations; Kafka work (topic creation, the
consumer, the outbox relay) runs in a supervised background task that keeps retrying
while the broker is away, so the HTTP side is up — and honest about readiness — either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shared.auth import warn_about_bare_tokens
from shared.consumer import EventConsumer, Handlers, check_handlers
from shared.db import apply_migrations, create_pool
from shared.events import EventData
from shared.http import RequestMetrics, RequestSizeLimit, install_problem_handlers, metrics_response
from shared.kafka import EventProducer
from shared.logs import configure_logging
from shared.openapi import install_openapi
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, Topic, dead_letter_topic, ensure_topics

log = logging.getLogger(__name__)


@dataclass
class ServiceSpec:
    name: str
    settings: ServiceSettings
    routers: list[APIRouter]
    migrations: Path | None = None  # None: the service has no database (ingest)
    consumes: list[Topic] = field(default_factory=list)
    handlers: Handlers = field(default_factory=dict)  # by event model; checked against `consumes`
    ignores: tuple[type[EventData], ...] = ()  # types on consumed topics this service has no use for
    uses_outbox: bool = False
    # Routes that are not an APIRouter (the metrics dashboard mounts static files).
    extra_routes: Callable[[FastAPI], None] | None = None


async def supervised(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work` forever, restarting it with backoff when it fails."""
    delay = 0.5
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("background task failed, restarting", extra={"task": name, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def create_app(spec: ServiceSpec) -> FastAPI:
    settings = spec.settings
    check_handlers(spec.consumes, spec.handlers, spec.ignores)  # a mismatch stops start-up here
    warn_about_bare_tokens(spec.settings.tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(spec.name, settings.log_level)
        producer = EventProducer(
            settings.kafka_bootstrap_servers,
            client_id=f"embudo-{spec.name}",
            send_timeout=settings.kafka_send_timeout_seconds,
            topic_prefix=settings.topic_prefix,
        )
        app.state.producer = producer
        app.state.pool = None
        if spec.migrations is not None:
            settings.require("database_url")
            app.state.pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
            applied = await apply_migrations(app.state.pool, spec.migrations)
            log.info("migrations applied", extra={"applied": applied})

        consumer = None
        group = settings.consumer_group or spec.name
        workers: list[Callable[[], Awaitable[None]]] = []
        if spec.uses_outbox:
            relay = OutboxRelay(app.state.pool, producer, settings.database_url)
            workers.append(relay.run)
        if spec.consumes:
            consumer = EventConsumer(
                group=group,
                topics=spec.consumes,
                handlers=spec.handlers,
                ignores=spec.ignores,
                pool=app.state.pool,
                producer=producer,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic_prefix=settings.topic_prefix,
                max_attempts=settings.max_handler_attempts,
                keep_processed_for=settings.keep_processed_for,
            )
            workers.append(consumer.run)

        async def kafka_side() -> None:
            await ensure_topics(
                settings.kafka_bootstrap_servers,
                ALL_TOPICS + (dead_letter_topic(group),),
                replication_factor=settings.kafka_replication_factor,
                prefix=settings.topic_prefix,
            )
            # Not named `group`: that is the consumer group, used above (UnboundLocalError).
            async with asyncio.TaskGroup() as tasks:
                for work in workers:
                    tasks.create_task(work())

        background = asyncio.create_task(supervised(f"{spec.name}-kafka", kafka_side))
        log.info("service started", extra={"service": spec.name})
        try:
            yield
        finally:
            if consumer is not None:
                consumer.stop()  # finish the batch in hand, then leave the group
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(consumer.finished.wait(), 5)
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)
            await producer.stop()
            if app.state.pool is not None:
                await app.state.pool.close()

    app = FastAPI(title=f"Embudo {spec.name}", lifespan=lifespan, version="1.0.0")
    app.state.settings = settings
    install_problem_handlers(app)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics)

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"])
    async def ready(request: Request) -> JSONResponse:
        checks = {"kafka": await request.app.state.producer.check()}
        if request.app.state.pool is not None:
            checks["database"] = await database_answers(request.app.state.pool)
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    for router in spec.routers:
        app.include_router(router)
    if spec.extra_routes is not None:
        spec.extra_routes(app)
    install_openapi(app, settings.currency)
    return app


async def database_answers(pool: asyncpg.Pool) -> bool:
    try:
        return await asyncio.wait_for(pool.fetchval("SELECT 1"), 2) == 1
    except Exception:  # readiness reports, it never raises
        return False


# --- Annotated dependencies for route functions ---------------------------------------


# Async on purpose: FastAPI runs plain-def dependencies in a thread pool on every request.
async def _pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


async def _producer(request: Request) -> EventProducer:
    return request.app.state.producer


DbPool = Annotated[asyncpg.Pool, Depends(_pool)]
Producer = Annotated[EventProducer, Depends(_producer)]
