"""The ingest HTTP API: form submissions, page views, campaign events and batches of them.

Bodies are read raw and validated once by pydantic straight from the bytes (not through
FastAPI's body parameters): that keeps the hot path lean and lets us answer 400/413/415
precisely. The OpenAPI request schemas are therefore declared by hand from the models.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.app import Producer
from shared.events import utcnow
from shared.http import Problem, etag_matches, field_path, invalid_fields, malformed_json, token_matches
from shared.kafka import EventProducer
from shared.openapi import problems

from . import service
from .domain import (
    FORM_SCALARS,
    MAX_FORM_INPUTS,
    UTM_NAMES,
    AnyInput,
    BatchInput,
    CampaignEventInput,
    FormSubmissionInput,
    PageViewInput,
    RateLimiter,
    context,
    form_field_path,
    form_input_errors,
    form_to_input,
    item_errors,
    safe_redirect,
)
from .settings import IngestSettings, Settings

router = APIRouter(prefix="/v1", tags=["ingest"])

JSON = "application/json"
# JSON sent as text/plain: a browser's beacon or keepalive fetch posts it cross-origin with
# no CORS preflight.
TEXT = "text/plain"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# --- dependencies -----------------------------------------------------------------------


# Both ways of sending the write key, declared in the document; write_key checks them.
_BEARER = HTTPBearer(auto_error=False, description="A write key")
_QUERY_KEY = APIKeyQuery(name="key", auto_error=False, description="A write key, for HTML forms and beacons")


async def write_key(
    settings: Settings,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    query_key: Annotated[str | None, Depends(_QUERY_KEY)],
) -> str:
    """The write key from `Authorization: Bearer`, or from `?key=` (HTML forms and
    beacons cannot set headers), compared in constant time."""
    key = (bearer.credentials if bearer is not None else None) or query_key
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


async def read_form(request: Request) -> FormData:
    """The posted form; a body that is no form (a multipart body without its boundary) is a
    400 saying so, not the JSON one."""
    try:
        return await request.form()
    except StarletteHTTPException as exc:
        if exc.status_code != 400:
            raise
        raise Problem(400, f"The request body is not a valid form: {exc.detail}", title="Malformed form") from None


async def read_json(
    request: Request, model: type[BaseModel], ctx: dict[str, Any], accepted: Sequence[str] = (JSON,)
) -> Any:
    media = media_type(request)
    if not (is_json(media) or media in accepted):
        raise unsupported(accepted)
    try:
        return model.model_validate_json(await request.body(), context=ctx)
    except ValidationError as exc:
        raise problem_for(exc) from None


# --- answering --------------------------------------------------------------------------


async def accept(
    items: Sequence[AnyInput],
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
    accepted: int = Field(ge=1)
    event_ids: list[uuid.UUID]  # in the order of the input


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its $defs inlined, to embed in openapi_extra. Inside a
    batch an item's `type` is required (it picks the model); the discriminator's mapping
    would point at the removed $defs, and `oneOf` over the `type` constants says the same."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            resolved = {k: resolve(v) for k, v in node.items() if k != "discriminator"}
            if "discriminator" in node:
                resolved["oneOf"] = [
                    {**item, "required": [*item.get("required", []), "type"]} for item in resolved["oneOf"]
                ]
            return resolved
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def html_form_schema() -> dict[str, Any]:
    """FormSubmissionInput as an HTML form posts it: every value a string, utm flat
    (utm_source...), other inputs into `fields`. A blank input counts as not sent, so each
    optional one may also be empty."""
    model = inline_schema(FormSubmissionInput)["properties"]

    def text(name: str) -> dict[str, Any]:
        options = [o for o in model[name].get("anyOf", [model[name]]) if o.get("type") != "null"]
        if len(options) == 1 and "format" not in options[0]:  # texts: "" passes already
            return {k: v for k, v in options[0].items() if k != "title"}
        # event_id's spellings, occurred_at's date-time, or an empty input (not sent)
        return {"anyOf": [{"type": "string", "maxLength": 0}, *options]}

    utm = model["utm"]["properties"]
    properties = {name: text(name) for name in sorted(FORM_SCALARS)}
    properties |= {f"utm_{name}": {k: v for k, v in utm[name]["anyOf"][0].items()} for name in UTM_NAMES}
    # Never forwarded: where to send the visitor (followed only to an allowed host), and the
    # write key should a form post it (only `?key=` is read).
    properties["redirect"] = {"type": "string"}
    properties["key"] = {"type": "string"}
    fields = model["fields"]
    return {
        "type": "object",
        "required": ["form_id", "email"],
        "properties": properties,
        # Other inputs land in `fields`.
        "additionalProperties": fields["additionalProperties"],
        "propertyNames": fields["propertyNames"],
        "maxProperties": MAX_FORM_INPUTS,
    }


def request_body(*media: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {m: {"schema": s} for m, s in media}}}


SEE_OTHER = {
    "description": "HTML form post: every event acknowledged, on to its `redirect` (an allowed host)",
    "headers": {"Location": {"description": "The form's `redirect`", "schema": {"type": "string"}}},
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Accepted, "description": "Every event acknowledged by Kafka"},
    **problems(400, 401, 413, 415, 422, 429, 503),
}

# --- routes -----------------------------------------------------------------------------


@router.post(
    "/form-submissions",
    status_code=202,
    responses={**RESPONSES, 303: SEE_OTHER, 400: {**RESPONSES[400], "description": "Malformed JSON or form body"}},
    openapi_extra=request_body(
        *((media, inline_schema(FormSubmissionInput)) for media in (JSON, TEXT)),
        *((media, html_form_schema()) for media in FORM_TYPES),
    ),
)
async def post_form_submission(
    request: Request, key: WriteKey, settings: Settings, producer: Producer, limiter: Limiter
) -> Response:
    """A lead-capture form submission, as JSON (also as text/plain, like a beacon) or straight
    from an HTML form."""
    now = utcnow()
    ctx = context(settings.currency, now, settings.clock_skew)
    media = media_type(request)
    redirect = None
    if media in FORM_TYPES:
        form = await read_form(request)
        pairs = form.multi_items()
        if any(isinstance(value, UploadFile) for _, value in pairs):
            files = [n for n, v in pairs if isinstance(v, UploadFile)]
            raise invalid_fields(
                [{"field": n, "message": "files are not accepted", "type": "file"} for n in files],
                "Files are not accepted.",
            )
        if refused := form_input_errors(pairs):  # type: ignore[arg-type]
            raise invalid_fields(refused)
        body, redirect = form_to_input(pairs)  # type: ignore[arg-type]
        try:
            submission = FormSubmissionInput.model_validate(body, context=ctx)
        except ValidationError as exc:
            raise problem_for(exc, form_field_path) from None
    elif is_json(media) or media == TEXT:
        submission = await read_json(request, FormSubmissionInput, ctx, accepted=(JSON, TEXT))
    else:
        raise unsupported([JSON, TEXT, *FORM_TYPES])
    event_ids = await accept([submission], key=key, settings=settings, producer=producer, limiter=limiter, now=now)
    target = safe_redirect(redirect, settings.allowed_redirect_hosts)
    if target is not None:
        return RedirectResponse(target, status_code=303)
    return accepted(event_ids)


@router.post(
    "/page-views",
    status_code=202,
    responses=RESPONSES,
    openapi_extra=request_body(*((media, inline_schema(PageViewInput)) for media in (JSON, TEXT))),
)
async def post_page_view(
    request: Request, key: WriteKey, settings: Settings, producer: Producer, limiter: Limiter
) -> Response:
    """A visitor seeing a page (the tracker sends one on every load). JSON, also as text/plain."""
    now = utcnow()
    ctx = context(settings.currency, now, settings.clock_skew)
    view = await read_json(request, PageViewInput, ctx, accepted=(JSON, TEXT))
    return accepted(await accept([view], key=key, settings=settings, producer=producer, limiter=limiter, now=now))


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
    """1–500 form submissions, page views and campaign events, each with its `type`. All or nothing:
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


# --- the web tracker --------------------------------------------------------------------

TRACKER = (Path(__file__).parent / "static" / "embudo.js").read_bytes()
TRACKER_ETAG = f'"{hashlib.sha256(TRACKER).hexdigest()[:32]}"'
# An hour: a new release reaches every page within it, and a page load rarely downloads it.
TRACKER_HEADERS = {"ETag": TRACKER_ETAG, "Cache-Control": "public, max-age=3600"}
JAVASCRIPT = "application/javascript"
TRACKER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The tracker script",
        "content": {JAVASCRIPT: {"schema": {"type": "string"}}},
        "headers": {
            "ETag": {"description": "The script's version", "schema": {"type": "string"}},
            "Cache-Control": {"description": "public, max-age=3600", "schema": {"type": "string"}},
        },
    },
    304: {
        "description": "The `If-None-Match` ETag is current",
        "headers": {"ETag": {"description": "The script's version", "schema": {"type": "string"}}},
    },
}


# Read from the request, not as a FastAPI parameter: no header value is invalid, so the
# operation has no 422 to document.
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The ETag of a copy already held: 304 when it is current",
    "schema": {"type": "string"},
}


@router.get(
    "/embudo.js",
    response_class=Response,
    responses=TRACKER_RESPONSES,
    openapi_extra={"parameters": [IF_NONE_MATCH]},
)
async def get_tracker(request: Request) -> Response:
    """The first-party web tracker (docs/ingest.md, "Web tracker"): no key needed to load it,
    `<script src=".../v1/embudo.js" data-key="WRITE_KEY" async></script>`."""
    if etag_matches(request.headers.get("if-none-match"), TRACKER_ETAG):
        return Response(status_code=304, headers=TRACKER_HEADERS)
    return Response(TRACKER, media_type=f"{JAVASCRIPT}; charset=utf-8", headers=TRACKER_HEADERS)
