"""The ingest HTTP API: form submissions, campaign events and batches of both.

Bodies are read raw and validated once by pydantic straight from the bytes (not through
FastAPI's body parameters): that keeps the hot path lean and lets us answer 400/413/415
precisely. The OpenAPI request schemas are therefore declared by hand from the models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from shared.app import Producer
from shared.events import utcnow
from shared.http import Problem, bearer_token, field_path, invalid_fields, malformed_json, token_matches
from shared.kafka import EventProducer

from . import service
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
)
from .settings import IngestSettings, Settings

router = APIRouter(prefix="/v1", tags=["ingest"])

JSON = "application/json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# --- dependencies -----------------------------------------------------------------------


async def write_key(request: Request, settings: Settings) -> str:
    """The write key from `Authorization: Bearer`, or from `?key=` (HTML forms and
    beacons cannot set headers), compared in constant time."""
    key = bearer_token(request) or request.query_params.get("key")
    if not token_matches(key, settings.write_keys):
        raise Problem(
            401,
            "A valid write key is required: 'Authorization: Bearer <write key>' or '?key=<write key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    assert key is not None
    return key


async def _rate_limiter(request: Request) -> RateLimiter:
    return request.app.state.rate_limiter


WriteKey = Annotated[str, Depends(write_key)]
Limiter = Annotated[RateLimiter, Depends(_rate_limiter)]

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
        return malformed_json()
    # An empty path means the body itself (e.g. an array where an object belongs).
    return invalid_fields([{"field": path(e["loc"]) or "body", "message": e["msg"], "type": e["type"]} for e in errors])


async def read_json(request: Request, model: type[BaseModel], ctx: dict[str, Any]) -> Any:
    if not is_json(media_type(request)):
        raise unsupported([JSON])
    try:
        return model.model_validate_json(await request.body(), context=ctx)
    except ValidationError as exc:
        raise problem_for(exc) from None


# --- answering --------------------------------------------------------------------------


async def accept(
    items: Sequence[FormSubmissionInput | CampaignEventInput],
    *,
    key: str,
    settings: IngestSettings,
    producer: EventProducer,
    limiter: RateLimiter,
    now: datetime,
) -> list[str]:
    try:
        return await service.accept(
            items, write_key=key, producer=producer, limiter=limiter, max_event_bytes=settings.max_event_bytes, now=now
        )
    except service.NotAcknowledged as exc:
        raise Problem(
            503,
            "The event log did not acknowledge in time; retry with the same event_ids.",
            headers={"Retry-After": str(settings.unavailable_retry_after_seconds)},
            event_ids=exc.event_ids,  # so a client that sent none can still retry safely
        ) from None


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
async def post_form_submission(
    request: Request, key: WriteKey, settings: Settings, producer: Producer, limiter: Limiter
) -> Response:
    """A lead-capture form submission, as JSON or straight from an HTML form."""
    now = utcnow()
    ctx = context(settings.currency, now, settings.clock_skew)
    media = media_type(request)
    redirect = None
    if media in FORM_TYPES:
        form = await request.form()
        pairs = form.multi_items()
        if any(isinstance(value, UploadFile) for _, value in pairs):
            files = [n for n, v in pairs if isinstance(v, UploadFile)]
            raise invalid_fields(
                [{"field": n, "message": "files are not accepted", "type": "file"} for n in files],
                "Files are not accepted.",
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
    event_ids = await accept([submission], key=key, settings=settings, producer=producer, limiter=limiter, now=now)
    target = safe_redirect(redirect, settings.allowed_redirect_hosts)
    if target is not None:
        return RedirectResponse(target, status_code=303)
    return accepted(event_ids)


@router.post(
    "/campaign-events",
    status_code=202,
    responses=RESPONSES,
    openapi_extra=request_body((JSON, inline_schema(CampaignEventInput))),
)
async def post_campaign_event(
    request: Request, key: WriteKey, settings: Settings, producer: Producer, limiter: Limiter
) -> Response:
    """An impression, click or spend of a campaign, from an ad platform or a script."""
    now = utcnow()
    event = await read_json(request, CampaignEventInput, context(settings.currency, now, settings.clock_skew))
    return accepted(await accept([event], key=key, settings=settings, producer=producer, limiter=limiter, now=now))


@router.post(
    "/batch",
    status_code=202,
    responses=RESPONSES,
    openapi_extra=request_body((JSON, inline_schema(BatchInput))),
)
async def post_batch(
    request: Request, key: WriteKey, settings: Settings, producer: Producer, limiter: Limiter
) -> Response:
    """1–500 form submissions and campaign events, each with its `type`. All or nothing:
    one invalid item and none is published."""
    now = utcnow()
    if not is_json(media_type(request)):
        raise unsupported([JSON])
    try:
        ctx = context(settings.currency, now, settings.clock_skew)
        batch = BatchInput.model_validate_json(await request.body(), context=ctx)
    except ValidationError as exc:
        problem = problem_for(exc)
        if problem.status == 400:
            raise problem from None
        items, rest = item_errors(exc.errors(include_url=False, include_context=False, include_input=False))
        raise invalid_fields(rest, "The batch has invalid items; nothing was published.", items=items) from None
    return accepted(await accept(batch.batch, key=key, settings=settings, producer=producer, limiter=limiter, now=now))
