"""Segment's message spec (what analytics.js, analytics-python, analytics-node and the
RudderStack SDKs send) mapped onto ingest's own inputs. Pure rules, no I/O.

A message becomes at most one input — a page view or a form submission — validated by the
same models, with the same validation context, as the native API, so Segment data obeys the
same rules. A message that cannot become the event it stands for is skipped with a reason,
never refused: SDKs drop a whole batch on any 4xx, so one bad message must not sink the
others. Messages that carry nothing Embudo tracks (screen, group, alias, most tracks) are
accepted and ignored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from shared.rules import EARLIEST_OCCURRED_AT

from .domain import MAX_FORM_FIELDS, MAX_UTM_LENGTH, FormSubmissionInput, PageViewInput

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
# analytics.js's short paths, one letter per type (`b` is the batch).
SHORT_PATHS = {"t": "track", "p": "page", "i": "identify", "s": "screen", "g": "group", "a": "alias"}
IDENTIFY_FORM_ID = "segment-identify"
# The label of a message whose type is none of MESSAGE_TYPES (bounded metric labels).
UNKNOWN_TYPE = "unknown"

# malformed: not an object, or of no known type; unmapped: a page without a url or visitor
# id, a form event without an email; invalid: refused by the native input model (a bad
# email or url, a timestamp that is no date-time...); too_large: over the message limit,
# or an event over EMBUDO_MAX_EVENT_BYTES once mapped.
SkipReason = Literal["malformed", "unmapped", "invalid", "too_large"]

# Segment's campaign names -> utm names (context.campaign.name is utm_campaign).
_CAMPAIGN = {"name": "campaign", "source": "source", "medium": "medium", "term": "term", "content": "content"}
# Traits read into the submission's own fields, so not repeated in `fields`.
_MAPPED_TRAITS = frozenset(("email", "form_id", "name", "firstName", "lastName", "phone", "company"))
_MAX_FIELD_NAME = 100

MappedInput = PageViewInput | FormSubmissionInput


@dataclass(frozen=True)
class Outcome:
    """What became of one message: an input to publish, a skip with its reason, or neither
    (accepted and ignored). `clamped`: its timestamp was implausible and replaced."""

    type: str
    input: MappedInput | None = None
    skipped: SkipReason | None = None
    clamped: bool = False

    def skip(self, reason: SkipReason) -> Outcome:
        return replace(self, input=None, skipped=reason)


def event_id_of(message_id: object, write_key: str) -> uuid.UUID | None:
    """The message's own id when it is a UUID; else a UUID5 of write key and messageId, so
    an SDK's resend of the same message is the same event (deduplicated downstream) and two
    sources' ids never collide. None without a messageId."""
    text = _text(message_id)
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, f"embudo:segment:{write_key}"), text)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime (a naive one is UTC, as Segment reads
    it). Raises ValueError for something else; None when absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


def lenient_time(value: object) -> datetime | None:
    """parse_time, with None for what is no timestamp (a batch's sentAt is only a hint)."""
    try:
        return parse_time(value)
    except ValueError:
        return None


def occurred_at(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime, clock_skew: timedelta
) -> tuple[datetime, bool]:
    """When it happened on our clock: the client's `timestamp` corrected by how far its clock
    is off (received_at − (sentAt − timestamp)) when it says when it sent the message.

    An SDK's queue can hold a message for hours, so old is fine; implausible is not: a
    moment more than the clock skew after we received the message, or before
    EARLIEST_OCCURRED_AT (an unset clock), is replaced by received_at (returned with True)
    rather than losing the message, which an SDK cannot correct and resend. A moment just
    after received_at (a clock a little ahead) is received_at too, like "now" elsewhere."""
    if timestamp is None:
        return received_at, False
    try:
        moment = received_at - (sent_at - timestamp) if sent_at is not None else timestamp
    except OverflowError:
        return received_at, True
    if moment > received_at:
        return received_at, moment > received_at + clock_skew
    if moment < EARLIEST_OCCURRED_AT:
        return received_at, True
    return moment, False


@dataclass(frozen=True)
class MessageMapper:
    """Maps the messages of one request. `route_type` is the type a single-message route
    implies (None on the batch, where each message names its own); `sent_at` and
    `shared_context` are the batch's, which a message's own override."""

    write_key: str
    form_events: frozenset[str]  # casefolded track event names that are form submissions
    received_at: datetime
    validation_context: dict[str, Any]  # domain.context(...): the native API's rules
    max_message_bytes: int
    route_type: str | None = None
    sent_at: datetime | None = None
    shared_context: object = None

    def map(self, message: object) -> Outcome:
        declared = self.route_type or (message.get("type") if isinstance(message, dict) else None)
        kind = declared.strip().lower() if isinstance(declared, str) else ""
        outcome = Outcome(type=kind if kind in MESSAGE_TYPES else UNKNOWN_TYPE)
        if not isinstance(message, dict) or outcome.type == UNKNOWN_TYPE:
            return outcome.skip("malformed")
        if message_size(message) > self.max_message_bytes:
            return outcome.skip("too_large")
        try:
            timestamp = parse_time(message.get("timestamp", message.get("originalTimestamp")))
        except ValueError:
            return outcome.skip("invalid")
        sent_at = lenient_time(message["sentAt"]) if "sentAt" in message else self.sent_at
        skew = self.validation_context["clock_skew"]
        moment, clamped = occurred_at(timestamp, sent_at, self.received_at, skew)
        outcome = replace(outcome, clamped=clamped)
        context = {**_obj(self.shared_context), **_obj(message.get("context"))}
        common = {"event_id": event_id_of(message.get("messageId"), self.write_key), "occurred_at": moment}

        if outcome.type == "page":
            body = page_view(message, context)
            return self._validated(outcome, PageViewInput, body | common if body else None)
        if outcome.type == "identify":
            # RudderStack's SDKs send an identify's traits in context.traits, Segment's at the top.
            traits = {**_obj(context.get("traits")), **_obj(message.get("traits"))}
            if _text(traits.get("email")) is None:
                return outcome  # identifying a user is no lead until there is an email
            body = submission(traits, IDENTIFY_FORM_ID, message, context)
            return self._validated(outcome, FormSubmissionInput, body | common)
        if outcome.type == "track":
            name = _text(message.get("event"))
            if name is None or name.strip().casefold() not in self.form_events:
                return outcome
            values = {**_obj(context.get("traits")), **_obj(message.get("properties"))}
            if _text(values.get("email")) is None:
                return outcome.skip("unmapped")
            body = submission(values, name.strip(), message, context)
            return self._validated(outcome, FormSubmissionInput, body | common)
        return outcome  # screen, group, alias: nothing Embudo tracks

    def _validated(self, outcome: Outcome, model: type[MappedInput], body: dict[str, Any] | None) -> Outcome:
        if body is None:
            return outcome.skip("unmapped")
        try:
            return replace(outcome, input=model.model_validate(body, context=self.validation_context))
        except ValidationError:
            return outcome.skip("invalid")


def message_size(message: object) -> int:
    """The message as compact UTF-8 JSON: never more than what an SDK measured before
    sending it (they measure with spaces, or escaped), so nothing an SDK let through is cut."""
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


def page_view(message: dict[str, Any], context: dict[str, Any]) -> dict[str, Any] | None:
    """PageViewInput's fields, or None without a visitor id or a url."""
    properties = _obj(message.get("properties"))
    page = _obj(context.get("page"))
    visitor = _text(message.get("anonymousId")) or _text(message.get("userId"))
    url = _text(properties.get("url")) or _text(page.get("url"))
    if not visitor or not url:
        return None
    body: dict[str, Any] = {"anonymous_id": visitor, "url": url}
    referrer = _text(page.get("referrer")) or _text(properties.get("referrer"))
    title = _text(properties.get("title")) or _text(page.get("title"))
    if referrer:
        body["referrer"] = referrer
    if title:
        body["title"] = title
    utm = utm_of_campaign(context.get("campaign"))
    if utm:  # else PageViewInput reads it from the url's utm_* parameters
        body["utm"] = utm
    return body


def submission(
    traits: dict[str, Any], default_form_id: str, message: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    """FormSubmissionInput's fields from a person's traits (or a form event's properties)."""
    page = _obj(context.get("page"))
    body: dict[str, Any] = {
        "form_id": _text(traits.get("form_id")) or default_form_id,
        "email": _text(traits.get("email")),
        "fields": fields_of(traits.items()),
    }
    name = _text(traits.get("name")) or " ".join(
        part for part in (_text(traits.get("firstName")), _text(traits.get("lastName"))) if part
    )
    company = traits.get("company")
    optional = {
        "name": name,
        "phone": _text(traits.get("phone")),
        "company": _text(_obj(company).get("name")) if isinstance(company, dict) else _text(company),
        # The visitor's id: what links the visitor's page views to the lead downstream.
        "anonymous_id": _text(message.get("anonymousId")),
        "page_url": _text(page.get("url")),
        "referrer": _text(page.get("referrer")),
        "utm": utm_of_campaign(context.get("campaign")),
    }
    body |= {name: value for name, value in optional.items() if value}
    return body


def fields_of(traits: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The other scalar traits as text (numbers and booleans in their JSON spelling), at
    most MAX_FORM_FIELDS of them, in their order. Nested values (an address) are left out,
    and so are names and values that could not be stored (overlong names, NUL)."""
    fields: dict[str, str] = {}
    for name, value in traits:
        if len(fields) == MAX_FORM_FIELDS:
            break
        if name in _MAPPED_TRAITS or not 1 <= len(name) <= _MAX_FIELD_NAME or "\x00" in name:
            continue
        text = _text(value, booleans=True)
        if text is not None and "\x00" not in text:
            fields[name] = text
    return fields


def utm_of_campaign(campaign: object) -> dict[str, str] | None:
    """context.campaign (what analytics.js read from the url's utm_* parameters) as utm,
    cleaned the way utm_of_url cleans the url's own: blank values and values with a NUL
    count as absent, overlong ones are cut. None when nothing usable is left."""
    utm: dict[str, str] = {}
    for name, value in _obj(campaign).items():
        key = _CAMPAIGN.get(name)
        text = _text(value)
        if key and text and text.strip() and "\x00" not in text:
            utm[key] = text[:MAX_UTM_LENGTH]
    return utm or None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object, *, booleans: bool = False) -> str | None:
    """A string as it is; a number as its JSON spelling (SDKs send ids and phone numbers as
    numbers too); a boolean only where asked; anything else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return json.dumps(value) if booleans else None
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def casefolded(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.strip().casefold() for name in names)


def messages_of(body: Mapping[str, Any]) -> list[Any] | None:
    """A batch body's messages; None when `batch` is no list."""
    batch = body.get("batch")
    return batch if isinstance(batch, list) else None
