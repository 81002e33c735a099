"""Ingest's rules: what a valid submission or campaign event is, how it becomes an event
on a topic, which redirects are safe, and the per-key rate limit. No I/O here.

Validation needs two facts from outside, passed as pydantic validation context
(see `context`): the configured currency and the current time.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from shared.errors import InvalidField
from shared.events import (
    WHITESPACE,
    CampaignEvent,
    CurrencyCode,
    Envelope,
    FormSubmission,
    Money,
    PageView,
    Text,
    UtcDatetime,
    Utm,
    money_input,
    normalise_email,
)
from shared.http import field_path
from shared.rules import CLOCK_SKEW, EARLIEST_OCCURRED_AT, check_currency
from shared.topics import CAMPAIGN_EVENTS, FORM_SUBMISSIONS, PAGE_VIEWS, Topic

SOURCE = "ingest"
MAX_BATCH_ITEMS = 500
MAX_FORM_FIELDS = 50
# An HTML form posts form_id, email and at most MAX_FORM_FIELDS more inputs, blank ones
# included: a count the OpenAPI document can state (maxProperties), which keeps `fields`
# within its limit whichever inputs they are.
MAX_FORM_INPUTS = MAX_FORM_FIELDS + 2
CENT = Decimal("0.01")

# Pragmatic, not RFC 5322: one @, something before it, a dotted domain after it, no
# whitespace or control characters inside. Leads normalises (strips, lowercases); ingest
# passes the address on as typed, so a stray space around it is no reason to lose a lead.
_NOT_IN_EMAIL = rf"@{WHITESPACE}\x00-\x1f\x7f"
_EMAIL = re.compile(rf"[^{_NOT_IN_EMAIL}]+@[^{_NOT_IN_EMAIL}.]+(\.[^{_NOT_IN_EMAIL}.]+)+")
MAX_EMAIL_LENGTH = 254
# The same rule for the OpenAPI document (surrounding whitespace is trimmed, so allowed).
EMAIL_PATTERN = rf"^[{WHITESPACE}]*{_EMAIL.pattern}[{WHITESPACE}]*$"
# At most MAX_EMAIL_LENGTH once trimmed: maxLength would count the surrounding whitespace.
EMAIL_LENGTH_PATTERN = rf"^[{WHITESPACE}]*[^{WHITESPACE}]{{1,{MAX_EMAIL_LENGTH}}}[{WHITESPACE}]*$"


def is_valid_email(email: str) -> bool:
    email = email.strip()
    return len(email) <= MAX_EMAIL_LENGTH and _EMAIL.fullmatch(email) is not None


def context(currency: str, now: datetime, clock_skew: timedelta = CLOCK_SKEW) -> dict[str, Any]:
    """Validation context for the input models."""
    return {"currency": currency, "now": now, "clock_skew": clock_skew}


# --- input ------------------------------------------------------------------------------

# UTM parameters, as URLs and HTML forms spell them (utm_source...).
_UTM_PREFIX = "utm_"
UTM_NAMES = ("source", "medium", "campaign", "term", "content")

ShortText = Annotated[Text, Field(max_length=200)]
UrlText = Annotated[Text, Field(max_length=2048)]
FieldName = Annotated[Text, Field(min_length=1, max_length=100)]
_NO_NUL = r"^[^\x00]*$"
FIELDS_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_FORM_FIELDS,
    "propertyNames": {"minLength": 1, "maxLength": 100, "pattern": _NO_NUL},
    "additionalProperties": {"type": "string", "pattern": _NO_NUL},
}


# pydantic reads a UUID in four spellings: hyphenated (`format: uuid`), 32 bare hex digits,
# in braces, or as a URN. The document names all four, so none is a surprise.
_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
UUID_SPELLINGS = [
    {"type": "string", "format": "uuid"},
    {"type": "string", "pattern": rf"^(?:{_HEX}{{32}}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED})$"},
]
EventId = Annotated[uuid.UUID, WithJsonSchema({"anyOf": UUID_SPELLINGS})]


class EventInput(BaseModel):
    # Unknown fields are refused: a misspelt "emial" must not vanish silently.
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The client's id makes retries safe: the same id twice is one event downstream.
    event_id: EventId | None = None
    occurred_at: UtcDatetime | None = None  # naive timestamps are refused (which zone?)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        skew: timedelta = info.context["clock_skew"]
        if value is not None and value > info.context["now"] + skew:
            raise PydanticCustomError(
                "future_timestamp",
                "occurred_at lies more than {seconds} seconds in the future",
                {"seconds": int(skew.total_seconds())},
            )
        if value is not None and value < EARLIEST_OCCURRED_AT:
            earliest = EARLIEST_OCCURRED_AT.isoformat()
            raise PydanticCustomError("timestamp_too_old", "occurred_at lies before {earliest}", {"earliest": earliest})
        return value


class FormSubmissionInput(EventInput):
    type: Literal["form_submission"] = "form_submission"  # required only inside a batch
    form_id: Text = Field(min_length=1, max_length=100)
    email: str = Field(json_schema_extra={"pattern": EMAIL_PATTERN, "allOf": [{"pattern": EMAIL_LENGTH_PATTERN}]})
    name: ShortText | None = None
    company: ShortText | None = None
    phone: ShortText | None = None
    page_url: UrlText | None = None
    referrer: UrlText | None = None
    anonymous_id: ShortText | None = None
    fields: Annotated[dict[FieldName, Text], WithJsonSchema(FIELDS_SCHEMA)] = Field(
        default_factory=dict, max_length=MAX_FORM_FIELDS
    )
    utm: Utm = Field(default_factory=Utm)

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        if not is_valid_email(value):
            raise PydanticCustomError("email", "not a valid email address")
        return value


class CostInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    amount: money_input(positive=False, integer_digits=16)  # type: ignore[valid-type]
    currency: CurrencyCode

    @field_validator("currency")
    @classmethod
    def _configured_currency(cls, value: str, info: ValidationInfo) -> str:
        try:
            return check_currency(value, info.context["currency"])
        except InvalidField as refused:
            raise PydanticCustomError("currency_mismatch", "{message}", {"message": refused.message}) from None


# The rules between `event`, `cost` and `count`, as the document states them.
SPEND_RULES = {
    "if": {"properties": {"event": {"const": "spend"}}, "required": ["event"]},
    "then": {"required": ["cost"], "properties": {"cost": {"type": "object"}, "count": {"const": 1}}},
    "else": {"properties": {"cost": {"type": "null"}}},
}


def integral(value: object) -> object:
    """JSON Schema's integer: 66 and 66.0 alike; never a string, a bool or 66.5."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "expected a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError("int_from_float", "expected a whole number")
        return int(value)
    return value


class CampaignEventInput(EventInput):
    model_config = ConfigDict(json_schema_extra={"allOf": [SPEND_RULES]})
    type: Literal["campaign_event"] = "campaign_event"  # required only inside a batch
    campaign_id: Text = Field(min_length=1, max_length=200)  # = utm.campaign on the website
    channel: Text = Field(min_length=1, max_length=200)  # = utm.medium: cpc, email, social...
    event: Literal["impression", "click", "spend"]
    count: Annotated[int, BeforeValidator(integral)] = Field(default=1, ge=1, le=1_000_000_000)
    cost: CostInput | None = Field(default=None, validate_default=True)

    @field_validator("count")
    @classmethod
    def _count_is_for_impressions_and_clicks(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("event") == "spend" and value != 1:
            raise PydanticCustomError("count_on_spend", "a spend is one amount: leave count out")
        return value

    @field_validator("cost")
    @classmethod
    def _cost_only_on_spend(cls, value: CostInput | None, info: ValidationInfo) -> CostInput | None:
        event = info.data.get("event")
        if event == "spend" and value is None:
            raise PydanticCustomError("cost_required", "a spend needs a cost")
        if event in ("impression", "click") and value is not None:
            raise PydanticCustomError("cost_refused", "cost is only accepted on spend events")
        return value


# An absolute http(s) URL: a host of letters, digits, dots and hyphens (browsers send IDNs in
# punycode), an optional port, then anything printable. No user-info: it is personal data.
HTTP_URL_PATTERN = r"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9]([A-Za-z0-9.-]*)(:[0-9]{1,5})?([/?#][^\x00-\x20\x7f]*)?$"
MAX_UTM_LENGTH = 200


class PageViewInput(EventInput):
    type: Literal["page_view"] = "page_view"  # required only inside a batch
    anonymous_id: Text = Field(min_length=1, max_length=64)  # the visitor's id (the tracker's cookie)
    url: str = Field(max_length=2048, pattern=HTTP_URL_PATTERN)
    referrer: UrlText | None = None
    title: Annotated[Text, Field(max_length=500)] | None = None
    utm: Utm | None = None  # absent: read from the url's utm_* parameters


def utm_of_url(url: str) -> Utm:
    """The url's utm_* query parameters (the first of each name). A value that could not be
    stored (NUL) counts as absent, and an overlong one is cut: the page view is kept either
    way, since the visitor did arrive."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=False):
        key = name[len(_UTM_PREFIX) :] if name.startswith(_UTM_PREFIX) else None
        if key in UTM_NAMES and key not in values and "\x00" not in value and value.strip():
            values[key] = value[:MAX_UTM_LENGTH]
    return Utm(**values)


def url_without_personal_data(url: str) -> str:
    """Scheme, host, path and only the utm_* query parameters: other parameters and the
    fragment can carry emails, tokens or search terms, which a page view must not keep."""
    parts = urlsplit(url)
    utm = [(n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True) if n.startswith(_UTM_PREFIX)]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, urlencode(utm), ""))


def referrer_without_personal_data(referrer: str | None) -> str | None:
    """Where the visitor came from, without its query or fragment (a search page's query is
    what the visitor typed); None when it is empty or no URL."""
    if not referrer or not referrer.strip():
        return None
    try:
        parts = urlsplit(referrer.strip())
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))


AnyInput = FormSubmissionInput | CampaignEventInput | PageViewInput
BatchItem = Annotated[AnyInput, Field(discriminator="type")]


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


# --- input to events --------------------------------------------------------------------


def to_envelope(item: AnyInput, now: datetime) -> tuple[Topic, Envelope]:
    """The event and its topic. Submissions are keyed by normalised email (one person's
    stay in order), page views by anonymous_id, campaign events by campaign_id."""
    data: FormSubmission | CampaignEvent | PageView
    if isinstance(item, PageViewInput):
        data = PageView(
            anonymous_id=item.anonymous_id,
            url=url_without_personal_data(item.url),
            referrer=referrer_without_personal_data(item.referrer),
            title=item.title,
            utm=item.utm if item.utm is not None else utm_of_url(item.url),
        )
        topic, key = PAGE_VIEWS, item.anonymous_id
    elif isinstance(item, FormSubmissionInput):
        data = FormSubmission(
            form_id=item.form_id,
            email=item.email,
            name=item.name,
            company=item.company,
            phone=item.phone,
            page_url=item.page_url,
            referrer=item.referrer,
            anonymous_id=item.anonymous_id,
            fields=item.fields,
            utm=item.utm,
        )
        topic, key = FORM_SUBMISSIONS, normalise_email(item.email)
    else:
        cost = None
        if item.cost is not None:
            # Always two decimals (100 -> "100.00"); adding 0 turns -0 into 0.
            cost = Money(amount=item.cost.amount.quantize(CENT) + 0, currency=item.cost.currency)
        data = CampaignEvent(
            campaign_id=item.campaign_id, channel=item.channel, event=item.event, count=item.count, cost=cost
        )
        topic, key = CAMPAIGN_EVENTS, item.campaign_id
    envelope = Envelope.wrap(data, source=SOURCE, key=key, occurred_at=item.occurred_at or now, event_id=item.event_id)
    return topic, envelope


# --- HTML forms -------------------------------------------------------------------------

FORM_SCALARS = frozenset(
    ("event_id", "occurred_at", "form_id", "email", "name", "company", "phone", "page_url", "referrer", "anonymous_id")
)
# Never forwarded: where to send the visitor, and the write key should a form post it.
_FORM_CONTROLS = frozenset(("redirect", "key"))


def form_to_input(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, Any], str | None]:
    """A posted HTML form as FormSubmissionInput's fields, plus its `redirect`.

    Same names as the JSON body, utm flat (utm_source...). Empty inputs count as absent
    (a browser sends every blank field). Any other named input lands in `fields`; a name
    posted several times (checkboxes) keeps its values joined by ", "."""
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if value != "":
            values.setdefault(name, []).append(value)
    joined = {name: ", ".join(parts) for name, parts in values.items()}
    body: dict[str, Any] = {}
    utm: dict[str, str] = {}
    fields: dict[str, str] = {}
    for name, value in joined.items():
        if name in FORM_SCALARS:
            body[name] = value
        elif name.startswith(_UTM_PREFIX) and name[len(_UTM_PREFIX) :] in UTM_NAMES:
            utm[name[len(_UTM_PREFIX) :]] = value
        elif name not in _FORM_CONTROLS:
            fields[name] = value
    if utm:
        body["utm"] = utm
    if fields:
        body["fields"] = fields
    return body, joined.get("redirect")


def form_input_errors(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Input names the document refuses (1-100 characters, no NUL), and more than
    MAX_FORM_INPUTS inputs, blank inputs included: a blank input is not sent on, but it is
    still part of the request. A name posted several times (checkboxes) is one input."""
    names = dict.fromkeys(name for name, _ in pairs)
    if len(names) > MAX_FORM_INPUTS:
        message = f"an HTML form may post at most {MAX_FORM_INPUTS} inputs: form_id, email and {MAX_FORM_FIELDS} more"
        return [{"field": "body", "message": message, "type": "too_many_inputs"}]
    return [
        {
            "field": name.replace("\x00", "\\x00")[:100],
            "message": "input names have 1-100 characters, no NUL",
            "type": "name",
        }
        for name in names
        if not 1 <= len(name) <= 100 or "\x00" in name
    ]


def form_field_path(loc: Sequence[Any]) -> str:
    """Name an error by the form input that caused it: ('utm', 'source') -> 'utm_source',
    ('fields', 'budget') -> 'budget'."""
    if len(loc) >= 2 and loc[0] == "utm":
        return f"{_UTM_PREFIX}{loc[1]}"
    if len(loc) >= 2 and loc[0] == "fields":
        return str(loc[1])
    return field_path(loc)


def safe_redirect(url: str | None, allowed_hosts: frozenset[str]) -> str | None:
    """`url` when it is an http(s) URL on an allowed host, else None. Backslashes,
    whitespace and user-info are refused: browsers and parsers disagree on them, which is
    how open redirects slip through."""
    if not url or not allowed_hosts:
        return None
    if any(c in "\\@" or c.isspace() or ord(c) < 32 for c in url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or host is None or host.lower() not in allowed_hosts:
        return None
    return url


# --- errors -----------------------------------------------------------------------------


def item_errors(errors: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Split a batch's validation errors into per item `{index, errors}` and the rest
    (e.g. "batch" missing or too long). Paths are relative to the item."""
    by_index: dict[int, list[dict[str, str]]] = {}
    rest: list[dict[str, str]] = []
    for error in errors:
        loc = error["loc"]
        if len(loc) >= 2 and loc[0] == "batch" and isinstance(loc[1], int):
            inner = loc[2:]
            if inner and inner[0] in ("form_submission", "campaign_event", "page_view"):
                inner = inner[1:]  # the union's tag, not a field
            path = field_path(inner) if inner else "type"  # a missing or unknown "type"
            described = {"field": path, "message": error["msg"], "type": error["type"]}
            by_index.setdefault(loc[1], []).append(described)
        else:
            rest.append({"field": field_path(loc) or "body", "message": error["msg"], "type": error["type"]})
    return [{"index": i, "errors": e} for i, e in sorted(by_index.items())], rest


# --- rate limit -------------------------------------------------------------------------


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`. A request is admitted while the
    bucket holds a whole token, and takes its whole cost, possibly going into debt: a batch larger
    than what is left still passes, and the debt delays whoever comes next. The long-run
    rate stays `rate`, and no batch size is ever impossible."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, cost: float, now: float) -> float:
        """0 when admitted (cost deducted); otherwise the seconds until it would be."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= cost
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per write key (the keys are configured, so the map stays small)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float, now: float) -> int:
        """0 when admitted, else whole seconds to wait (for Retry-After, at least 1)."""
        if not self.enabled:
            return 0
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(cost, now)
        return max(1, math.ceil(wait)) if wait > 0 else 0
