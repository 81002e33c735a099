"""The Segment-compatible surface: `/segment/v1/batch`, `identify`, `track`, `page`,
`screen`, `group`, `alias` and analytics.js's short paths `t p i s g a b`, so Segment's and
RudderStack's SDKs send to ingest as they would to Segment.

The wire rules those clients depend on differ from the native API's on purpose:
- the write key comes as HTTP Basic (the key as username, empty password), else as
  `writeKey` in the body; Bearer works too;
- bodies are JSON, also sent as text/plain (analytics.js), possibly gzip-compressed (the
  RudderStack SDK's default); the size limits apply to the inflated body, and inflating
  stops at the limit;
- success is 200 `{"success": true}`: the RudderStack SDK takes anything else, 202
  included, for a failure and sends the batch again;
- SDKs drop a whole batch on any 4xx, so a message that cannot be mapped is skipped and
  counted (`embudo_ingest_segment_skipped_total`), never refused; 4xx is for the request
  as a whole. Error bodies carry Segment's `code` and `message` besides problem+json's
  members: the RudderStack SDK reads them, and retries a 4xx without them.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBearer
from prometheus_client import Counter
from pydantic import BaseModel

from shared.app import Producer
from shared.events import utcnow
from shared.http import Problem, token_matches
from shared.kafka import EventProducer
from shared.openapi import problems

from . import service
from .api import JSON, TEXT, Limiter, is_json, media_type
from .domain import RateLimiter, context
from .segment_mapping import (
    MESSAGE_TYPES,
    SHORT_PATHS,
    MessageMapper,
    Outcome,
    casefolded,
    lenient_time,
    messages_of,
)
from .settings import IngestSettings, Settings

router = APIRouter(prefix="/segment/v1", tags=["segment"])

SKIPPED = Counter(
    "embudo_ingest_segment_skipped_total",
    "Segment messages accepted but not published: they could not become the event they stand for",
    ["type", "reason"],
)
IGNORED = Counter(
    "embudo_ingest_segment_ignored_total", "Segment messages accepted that carry nothing Embudo tracks", ["type"]
)
CLAMPED = Counter(
    "embudo_ingest_segment_clamped_total",
    "Segment messages whose implausible timestamp was replaced by the time they were received",
    ["type"],
)

CHALLENGE = {"WWW-Authenticate": 'Basic realm="Embudo ingest", Bearer'}
GZIP = ("gzip", "x-gzip")


def refusal(status: int, code: str, detail: str, **kwargs: Any) -> Problem:
    """A problem+json answer that also reads as Segment's error body."""
    return Problem(status, detail, code=code, message=detail, success=False, **kwargs)


def unauthorized() -> Problem:
    detail = "A valid write key is required: HTTP Basic with the key as username, 'writeKey' in the body, or Bearer."
    return refusal(401, "unauthorized", detail, headers=CHALLENGE)


# --- the write key ----------------------------------------------------------------------


class _Documented:
    """Declares a scheme in the document; `header_key` reads the header itself, so that a
    malformed one is this surface's 401 and not FastAPI's."""

    async def __call__(self, request: Request) -> None:
        return None


class _Basic(_Documented, HTTPBasic):
    pass


class _Bearer(_Documented, HTTPBearer):
    pass


_BASIC = _Basic(scheme_name="HTTPBasic", description="The write key as the username, with an empty password")
_BEARER = _Bearer(scheme_name="HTTPBearer", description="A write key")  # the native API's scheme
Documented = [Depends(_BASIC), Depends(_BEARER)]


def header_key(request: Request) -> str | None:
    """The key an Authorization header presents (None without one); an unusable header is
    a 401 here, not a fall-back to the body."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic":
        try:
            user, _, _password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized() from None
        if user:
            return user
    raise unauthorized()


def body_key(body: object) -> str | None:
    """`writeKey` in the body; in a batch without one, the first message's (analytics.js
    puts the key in every message)."""
    if not isinstance(body, dict):
        return None
    candidates = [body, *(m for m in messages_of(body) or () if isinstance(m, dict))]
    return next((c["writeKey"] for c in candidates if isinstance(c.get("writeKey"), str)), None)


# --- reading bodies ---------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


def inflate(data: bytes, limit: int) -> bytes:
    """A gzip body, inflated: BodyTooLarge as soon as it would exceed `limit` bytes (it is
    never inflated further, so a small bomb costs no more than the limit), ValueError when
    it is not gzip. Concatenated members are one body, as gzip itself reads them."""
    inflated = bytearray()
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            inflated += inflater.decompress(data, limit + 1 - len(inflated))
        except zlib.error as exc:
            raise ValueError(f"not gzip: {exc}") from None
        if len(inflated) > limit:
            raise BodyTooLarge
        if not inflater.eof:
            raise ValueError("truncated gzip body")
        data = inflater.unused_data
        if not data:
            return bytes(inflated)


async def read_body(request: Request, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", *GZIP):
        raise refusal(415, "unsupported_encoding", "Send the body uncompressed or gzip-compressed.")
    raw = await request.body()
    if encoding in GZIP:
        return inflate(raw, limit)
    if len(raw) > limit:
        raise BodyTooLarge
    return raw


# --- answering --------------------------------------------------------------------------


def count(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.skipped is not None:
            SKIPPED.labels(outcome.type, outcome.skipped).inc()
        elif outcome.input is None:
            IGNORED.labels(outcome.type).inc()
        if outcome.clamped:
            CLAMPED.labels(outcome.type).inc()


async def receive(
    request: Request, route_type: str | None, settings: IngestSettings, producer: EventProducer, limiter: RateLimiter
) -> JSONResponse:
    """One request of either shape: a batch (`route_type` None) or a single message."""
    received_at = utcnow()
    presented = header_key(request)
    if presented is not None and not token_matches(presented, settings.write_keys):
        raise unauthorized()
    media = media_type(request)
    if not (is_json(media) or media == TEXT):
        raise refusal(415, "unsupported_media_type", f"Send the body as {JSON} or {TEXT}.", accepted=[JSON, TEXT])
    limit = settings.segment_max_batch_bytes if route_type is None else settings.segment_max_message_bytes
    try:
        body = json.loads(await read_body(request, limit))
    except BodyTooLarge:
        what = "A batch" if route_type is None else "A message"
        raise refusal(413, "too_large", f"{what} may be at most {limit} bytes, uncompressed.") from None
    except (ValueError, RecursionError):
        if presented is None:  # no key anywhere: the body cannot tell one
            raise unauthorized() from None
        raise refusal(400, "malformed_json", "The request body is not valid JSON.", title="Malformed JSON") from None
    if presented is None:
        presented = body_key(body)
    if not token_matches(presented, settings.write_keys):
        raise unauthorized()
    assert presented is not None
    if not isinstance(body, dict):
        raise refusal(400, "invalid_body", "The body must be a JSON object.", title="Malformed request")
    if route_type is None:
        messages = messages_of(body)
        if messages is None:
            raise refusal(400, "invalid_body", "A batch is an object with a 'batch' array.", title="Malformed request")
    else:
        messages = [body]
    mapper = MessageMapper(
        write_key=presented,
        form_events=casefolded(settings.segment_form_events),
        received_at=received_at,
        validation_context=context(settings.currency, received_at, settings.clock_skew),
        max_message_bytes=settings.segment_max_message_bytes,
        route_type=route_type,
        # A batch's sentAt and context hold for its messages; a single message has its own.
        sent_at=lenient_time(body.get("sentAt")) if route_type is None else None,
        shared_context=body.get("context") if route_type is None else None,
    )
    try:
        outcomes = await service.accept_messages(
            messages, mapper, producer=producer, limiter=limiter, max_event_bytes=settings.max_event_bytes
        )
    except service.NotAcknowledged:
        raise refusal(
            503,
            "unavailable",
            "The event log did not acknowledge in time; send the batch again.",
            headers={"Retry-After": str(settings.unavailable_retry_after_seconds)},
        ) from None
    count(outcomes)
    return JSONResponse({"success": True})


# --- OpenAPI ----------------------------------------------------------------------------


class Success(BaseModel):
    success: Literal[True]


def _described(text: str) -> dict[str, str]:
    return {"description": text}


# Descriptions without types: a value of another type is no reason to refuse the request
# (ids may be numbers, a bad timestamp skips one message), so the document states none.
MESSAGE_PROPERTIES = {
    "type": _described(f"On /batch: {', '.join(MESSAGE_TYPES)}. A single-message route implies its own."),
    "messageId": _described("Its id: a UUID is the event_id, any other id gives a UUID5 of write key and id."),
    "anonymousId": _described("The visitor's id: a page view's anonymous_id, and a form submission's."),
    "userId": _described("A page view's anonymous_id when there is no anonymousId."),
    "timestamp": _described("ISO 8601; corrected by sentAt for the client's clock. Absent: the time received."),
    "sentAt": _described("When the client sent it (the batch's sentAt holds for all its messages)."),
    "event": _described("A track's name: those in EMBUDO_SEGMENT_FORM_EVENTS are form submissions."),
    "properties": _described("page: url, title, referrer; a form track: email, form_id, name, phone, company..."),
    "traits": _described("identify: email, form_id, name (or firstName, lastName), phone, company..."),
    "context": _described("page (url, referrer, title), campaign (name, source, medium, term, content), traits"),
    "writeKey": _described("The write key, when no Authorization header carries one."),
}
MESSAGE = {
    "type": "object",
    "description": "A Segment message. Any object is accepted; what cannot be mapped is skipped and counted.",
    "properties": MESSAGE_PROPERTIES,
}
BATCH = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {
            "type": "array",
            "description": "Messages, each with its `type`. No count limit; one that is no object is skipped.",
            "items": {"properties": MESSAGE_PROPERTIES},
        },
        "sentAt": MESSAGE_PROPERTIES["sentAt"],
        "context": _described("Context shared by every message (a message's own keys win)."),
        "writeKey": MESSAGE_PROPERTIES["writeKey"],
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Success, "description": "Accepted: every mapped message acknowledged by Kafka"},
    **problems(400, 401, 413, 415, 429, 503),
}
RESPONSES[400] = {**RESPONSES[400], "description": "The body is not JSON, not an object, or a batch without `batch`"}
RESPONSES[413] = {**RESPONSES[413], "description": "Over 32 KB (a message) or 500 KB (a batch), uncompressed"}


DESCRIPTION = (
    "Segment's HTTP tracking API, for Segment's and RudderStack's SDKs. The write key comes as HTTP Basic "
    "(the key as username, an empty password), as `writeKey` in the body, or as Bearer. The body is JSON, also "
    "sent as text/plain, optionally with `Content-Encoding: gzip`; the size limits apply to it uncompressed. "
    "A message that cannot be mapped is skipped and counted in /metrics (embudo_ingest_segment_skipped_total), "
    "never refused; page, identify (with traits.email) and form tracks (EMBUDO_SEGMENT_FORM_EVENTS) become "
    "events, the rest is accepted and ignored."
)


def _request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {media: {"schema": schema} for media in (JSON, TEXT)}}}


def _add(path: str, route_type: str | None, summary: str) -> None:
    async def endpoint(request: Request, settings: Settings, producer: Producer, limiter: Limiter) -> JSONResponse:
        return await receive(request, route_type, settings, producer, limiter)

    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=f"segment_{path.strip('/')}",
        operation_id=f"segment_{path.strip('/')}",
        summary=summary,
        description=DESCRIPTION,
        responses=RESPONSES,
        dependencies=Documented,
        openapi_extra=_request_body(BATCH if route_type is None else MESSAGE),
        response_class=JSONResponse,
    )


_add("/batch", None, "A batch of Segment messages")
_add("/b", None, "A batch of Segment messages (analytics.js's short path)")

# One operation for the single-message paths (the long names and analytics.js's letters):
# they differ only in the type they imply.
MESSAGE_PATHS = {**{name: name for name in MESSAGE_TYPES}, **SHORT_PATHS}
MESSAGE_PATH_PARAMETER = {
    "name": "message_path",
    "in": "path",
    "required": True,
    "description": "The message's type, or analytics.js's letter for it (t p i s g a)",
    "schema": {"type": "string", "enum": list(MESSAGE_PATHS)},
}


@router.post(
    "/{message_path}",
    name="segment_message",
    operation_id="segment_message",
    summary="One Segment message: /identify, /track, /page, /screen, /group, /alias, or /i /t /p /s /g /a",
    description=DESCRIPTION,
    responses={**RESPONSES, **problems(404)},
    dependencies=Documented,
    openapi_extra=_request_body(MESSAGE) | {"parameters": [MESSAGE_PATH_PARAMETER]},
    response_class=JSONResponse,
)
async def post_message(request: Request, settings: Settings, producer: Producer, limiter: Limiter) -> JSONResponse:
    # Read from the path, not declared as a parameter: a string that cannot fail to parse
    # would still earn the document FastAPI's 422. The document declares it by hand.
    message_path = request.path_params["message_path"]
    route_type = MESSAGE_PATHS.get(message_path)
    if route_type is None:
        raise refusal(404, "not_found", f"No such path; the message paths are {', '.join(MESSAGE_PATHS)} and batch.")
    return await receive(request, route_type, settings, producer, limiter)
