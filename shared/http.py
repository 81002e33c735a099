"""HTTP plumbing shared by the four APIs: RFC 9457 problem+json errors, a request-size
limit, write-key comparison, request metrics, health and Prometheus endpoints."""

from __future__ import annotations

import hmac
import logging
import time
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db import DATABASE_UNAVAILABLE
from shared.errors import Conflict, DomainError, InvalidField, NotFound, RateLimited, TooLarge

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem+json document."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'utm', 'source') -> 'utm.source'; list indexes as [n]."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or ".".join(map(str, loc))


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"field": field_path(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors]


def invalid_fields(
    errors: list[dict[str, Any]], detail: str = "The request has invalid fields.", **extra: Any
) -> Problem:
    """The one 422: `errors` lists {field, message, type}, never the value sent."""
    return Problem(422, detail, title="Validation failed", errors=errors, **extra)


def malformed_json() -> Problem:
    return Problem(400, "The request body is not valid JSON.", title="Malformed JSON")


# Each kind of domain refusal has one status; the service layer never picks HTTP codes.
DOMAIN_STATUS: dict[type[DomainError], int] = {
    InvalidField: 422,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    RateLimited: 429,
}


def domain_problem(exc: DomainError) -> Problem:
    if isinstance(exc, InvalidField):
        return invalid_fields([{"field": exc.field, "message": exc.message, "type": "value_error"}], exc.message)
    status = next((code for kind, code in DOMAIN_STATUS.items() if isinstance(exc, kind)), 400)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return Problem(status, exc.detail, title=exc.title, headers=headers, **exc.extra)


def _answer(problem: Problem) -> JSONResponse:
    return problem_response(
        problem.status, problem.detail, title=problem.title, headers=problem.headers, **problem.extra
    )


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return _answer(exc)

    @app.exception_handler(DomainError)
    async def _refused(_: Request, exc: DomainError) -> JSONResponse:
        return _answer(domain_problem(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e["type"] == "json_invalid" for e in errors):
            return _answer(malformed_json())
        return _answer(invalid_fields(validation_errors(errors)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not read the body as the JSON it expects
            return _answer(malformed_json())
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(exc.status_code, detail, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DATABASE_UNAVAILABLE):  # an outage: the client should come back
            log.warning("database unavailable", extra={"path": request.url.path, "error": repr(exc)})
            return problem_response(
                503, "The database is not reachable right now; retry shortly.", headers={"Retry-After": "5"}
            )
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem_response(500, "An unexpected error occurred.")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette names only the first route's,
    and one path often has several routes (GET and POST /v1/deals)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(request.url.path):
            methods |= route.methods
    return ", ".join(sorted(methods))


def etag_matches(if_none_match: str | None, current: str) -> bool:
    """If-None-Match against the current ETag, by weak comparison (RFC 9110 §13.1.2: W/
    prefixes are ignored); `*` matches anything."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return current.removeprefix("W/") in candidates


def token_matches(presented: str | None, valid_tokens: list[str]) -> bool:
    """Constant-time comparison against every configured token."""
    if not presented:
        return False
    matched = False
    for token in valid_tokens:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    return matched


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class RequestSizeLimit:
    """Refuse bodies larger than `max_bytes` with 413, whether or not Content-Length is sent.
    The body is read up front (it is small by definition) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(413, f"The request body exceeds {self.max_bytes} bytes.")
        await response(scope, receive, send)


REQUESTS = Counter("embudo_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("embudo_http_request_seconds", "HTTP request latency", ["route"])


class RequestMetrics:
    """Counts requests by route template (not raw path, which would explode label cardinality)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - started)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
