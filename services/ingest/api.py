"""The ingest HTTP API: form submissions, campaign events and batches of both.

Bodies are read raw and validated once by pydantic straight from the bytes (not through
FastAPI's body parameters): that keeps the hot path lean and lets us answer 400/413/415
precisely. The OpenAPI request schemas are therefore declared by hand from the models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from shared.events import utcnow
from shared.http import Problem, bearer_token, field_path, token_matches
from shared.kafka import EventProducer, PublishUnavailable

from . import store
from .domain import (
    UTM_NAMES,
    BatchInput,
    CampaignEventInput,
    FormSubmissionInput,
    RateLimiter,
    context,
    form_field_path,
    form_to_input,
    item_errors,
    safe_redirect,
    to_envelope,
)
from .settings import IngestSettings

router = APIRouter(prefix="/v1", tags=["ingest"])

JSON = "application/json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# --- the one dependency: who is calling, and what accepting their events needs --------


@dataclass(frozen=True, slots=True)
class Caller:
    key: str  # the write key, checked
    settings: IngestSettings
    producer: EventProducer
    limiter: RateLimiter
    redirect_hosts: frozenset[str]


async def authenticated(request: Request) -> Caller:
    """The write key from `Authorization: Bearer`, or from `?key=` (HTML forms and
    beacons cannot set headers), compared in constant time. One async dependency on
    purpose: each extra one costs a little on every request, and sync ones a thread hop."""
    state = request.app.state
    key = bearer_token(request) or request.query_params.get("key")
    if not token_matches(key, state.write_keys):
        raise Problem(
            401,
            "A valid write key is required: 'Authorization: Bearer <write key>' or '?key=<write key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    assert key is not None
    return Caller(key, state.settings, state.producer, state.rate_limiter, state.redirect_hosts)


Authenticated = Annotated[Caller, Depends(authenticated)]

# --- reading bodies ---------------------------------------------------------------------


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def unsupported(accepted: Sequence[str]) -> Problem:
    return Problem(415, f"Send the body as {' or '.join(accepted)}.", accepted=list(accepted))


def is_json(media: str) -> bool:
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def problem_for(exc: ValidationError, path: Callable[[Sequence[Any]], str] = field_path) -> Problem:
    """400 for malformed JSON, else 422 naming each field (never echoing its value)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return Problem(400, "The request body is not valid JSON.", title="Malformed JSON")
    # An empty path means the body itself (e.g. an array where an object belongs).
    listed = [{"field": path(e["loc"]) or "body", "message": e["msg"], "type": e["type"]} for e in errors]
    return Problem(422, "The request has invalid fields.", title="Validation failed", errors=listed)


async def read_json(request: Request, model: type[BaseModel], ctx: dict[str, Any]) -> Any:
    if not is_json(media_type(request)):
        raise unsupported([JSON])
    try:
        return model.model_validate_json(await request.body(), context=ctx)
    except ValidationError as exc:
        raise problem_for(exc) from None


# --- answering --------------------------------------------------------------------------


async def accept(items: Sequence[FormSubmissionInput | CampaignEventInput], caller: Caller, now: datetime) -> list[str]:
    """Turn valid items into events and publish them all; returns their event_ids once
    Kafka acknowledged every one."""
    settings = caller.settings
    prepared: list[store.Prepared] = []
    event_ids: list[str] = []
    too_large: list[int] = []
    for index, item in enumerate(items):
        topic, envelope = to_envelope(item, now)
        value = envelope.to_bytes()
        if len(value) > settings.max_event_bytes:
            too_large.append(index)
        prepared.append((topic, envelope.key.encode(), value))
        event_ids.append(str(envelope.event_id))
    if too_large:
        raise Problem(
            413,
            f"An event may be at most {settings.max_event_bytes} bytes as published.",
            title="Event too large",
            items=too_large,
        )
    wait = caller.limiter.take(caller.key, len(prepared), time.monotonic())
    if wait:
        raise Problem(429, "Rate limit for this write key exceeded.", headers={"Retry-After": str(wait)})
    try:
        await store.publish(caller.producer, prepared)
    except PublishUnavailable:
        raise Problem(
            503,
            "The event log did not acknowledge in time; retry with the same event_ids.",
            headers={"Retry-After": str(settings.unavailable_retry_after_seconds)},
            event_ids=event_ids,  # so a client that sent none can still retry safely
        ) from None
    return event_ids


def accepted(event_ids: list[str]) -> JSONResponse:
    return JSONResponse({"accepted": len(event_ids), "event_ids": event_ids}, status_code=202)


# --- OpenAPI ----------------------------------------------------------------------------


class Accepted(BaseModel):
    accepted: int
    event_ids: list[str]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its $defs inlined, to embed in openapi_extra."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


HTML_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["form_id", "email"],
    "properties": {
        **{
            name: {"type": "string"}
            for name in (
                "event_id",
                "occurred_at",
                "form_id",
                "email",
                "name",
                "company",
                "phone",
                "page_url",
                "referrer",
                "anonymous_id",
                "redirect",
            )
        },
        **{f"utm_{name}": {"type": "string"} for name in UTM_NAMES},
    },
    "additionalProperties": {"type": "string"},  # other inputs land in `fields`
}


def request_body(*media: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {m: {"schema": s} for m, s in media}}}


RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Accepted, "description": "Every event acknowledged by Kafka"},
    400: {"description": "Malformed JSON"},
    401: {"description": "Missing or unknown write key"},
    413: {"description": "Request over 512 KB, or an event over 32 KB"},
    415: {"description": "Unsupported content type"},
    422: {"description": "Invalid fields (paths listed)"},
    429: {"description": "Rate limit of the write key (see Retry-After)"},
    503: {"description": "Kafka did not acknowledge in time (see Retry-After)"},
}

# --- routes -----------------------------------------------------------------------------


@router.post(
    "/form-submissions",
    status_code=202,
    responses={**RESPONSES, 303: {"description": "HTML form post: on to its allowed `redirect`"}},
    openapi_extra=request_body(
        (JSON, inline_schema(FormSubmissionInput)),
        ("application/x-www-form-urlencoded", HTML_FORM_SCHEMA),
    ),
)
async def post_form_submission(request: Request, caller: Authenticated) -> Response:
    """A lead-capture form submission, as JSON or straight from an HTML form."""
    now = utcnow()
    ctx = context(caller.settings.currency, now)
    media = media_type(request)
    redirect = None
    if media in FORM_TYPES:
        form = await request.form()
        pairs = form.multi_items()
        if any(isinstance(value, UploadFile) for _, value in pairs):
            raise Problem(
                422,
                "Files are not accepted.",
                title="Validation failed",
                errors=[
                    {"field": n, "message": "files are not accepted", "type": "file"}
                    for n, v in pairs
                    if isinstance(v, UploadFile)
                ],
            )
        body, redirect = form_to_input(pairs)  # type: ignore[arg-type]
        try:
            submission = FormSubmissionInput.model_validate(body, context=ctx)
        except ValidationError as exc:
            raise problem_for(exc, form_field_path) from None
    elif is_json(media):
        submission = await read_json(request, FormSubmissionInput, ctx)
    else:
        raise unsupported([JSON, *FORM_TYPES])
    event_ids = await accept([submission], caller, now)
    target = safe_redirect(redirect, caller.redirect_hosts)
    if target is not None:
        return RedirectResponse(target, status_code=303)
    return accepted(event_ids)


@router.post(
    "/campaign-events",
    status_code=202,
    responses=RESPONSES,
    openapi_extra=request_body((JSON, inline_schema(CampaignEventInput))),
)
async def post_campaign_event(request: Request, caller: Authenticated) -> Response:
    """An impression, click or spend of a campaign, from an ad platform or a script."""
    now = utcnow()
    event = await read_json(request, CampaignEventInput, context(caller.settings.currency, now))
    return accepted(await accept([event], caller, now))


@router.post(
    "/batch",
    status_code=202,
    responses=RESPONSES,
    openapi_extra=request_body((JSON, inline_schema(BatchInput))),
)
async def post_batch(request: Request, caller: Authenticated) -> Response:
    """1–500 form submissions and campaign events, each with its `type`. All or nothing:
    one invalid item and none is published."""
    now = utcnow()
    if not is_json(media_type(request)):
        raise unsupported([JSON])
    try:
        ctx = context(caller.settings.currency, now)
        batch = BatchInput.model_validate_json(await request.body(), context=ctx)
    except ValidationError as exc:
        problem = problem_for(exc)
        if problem.status == 400:
            raise problem from None
        items, rest = item_errors(exc.errors(include_url=False, include_context=False, include_input=False))
        raise Problem(
            422,
            "The batch has invalid items; nothing was published.",
            title="Validation failed",
            items=items,
            errors=rest,
        ) from None
    return accepted(await accept(batch.batch, caller, now))
