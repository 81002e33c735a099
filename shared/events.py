"""Event envelope and the schema of every event Embudo publishes.

An event on the wire is one JSON envelope (CloudEvents-like). Its `data` is validated
against the model registered for its `type`; events written with an older `version`
are upcast first, so handlers only ever see the current shape. Published events are
never rewritten: a breaking change gets a new version plus an upcaster.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from shared.rules import DealStage, LeadStage, RevenueKind


def to_utc(value: datetime) -> datetime:
    """The same moment in UTC. Near the ends of Python's range UTC has no such moment
    (0001-01-01T00:00+01:00 is in year 0): a ValueError, so a model refuses it as invalid
    instead of an OverflowError failing the request or the database call that converts it."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range (years 1 to 9999 in UTC)") from None


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)?")


def is_rfc3339(text: str) -> bool:
    return _RFC3339.fullmatch(text) is not None


def rfc3339(value: object) -> object:
    """Only what `format: date-time` promises: pydantic alone would also take Unix seconds
    (`0.5`, `1700000000`) and other spellings that the OpenAPI documents never admit."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and is_rfc3339(value):
        return value
    raise PydanticCustomError("datetime_format", "expected an RFC 3339 date-time, e.g. 2025-03-01T09:30:00+01:00")


def iso_date(value: object) -> object:
    """Only what `format: date` promises (YYYY-MM-DD): pydantic alone would take Unix seconds."""
    if isinstance(value, date) or (isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d", value)):
        return value
    raise PydanticCustomError("date_format", "expected an RFC 3339 date, e.g. 2025-03-31")


IsoDate = Annotated[date, BeforeValidator(iso_date)]

# Every timestamp Embudo stores or publishes is timezone-aware and normalised to UTC; API
# models take it for client timestamps too, so the out-of-range ones are a 422.
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(rfc3339), AfterValidator(to_utc)]
# Money travels as a decimal string ("12.50"), never a float.
Amount = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str, when_used="json")]


def money_input(*, positive: bool, integer_digits: int) -> Any:
    """An amount a client sends: a JSON number or a decimal string, at most two decimals.
    The OpenAPI schema states exactly what is accepted, and the pattern is enforced, so a
    string such as "1e2" or "-0" is refused rather than read some way the document never said."""
    max_value = Decimal(10) ** integer_digits - Decimal("0.01")
    if positive:  # 0.01 or more: no zero in any spelling
        pattern = rf"^([1-9][0-9]{{0,{integer_digits - 1}}}(\.[0-9]{{1,2}})?|0?\.(0[1-9]|[1-9][0-9]?))$"
    else:
        pattern = rf"^[0-9]{{1,{integer_digits}}}(\.[0-9]{{1,2}})?$"
    largest = float(max_value)
    while Decimal(largest) > max_value:  # the float nearest the bound may lie above it
        largest = math.nextafter(largest, 0)
    number: dict[str, Any] = {"type": "number", "multipleOf": 0.01, "maximum": largest}
    number["exclusiveMinimum" if positive else "minimum"] = 0

    def plain(value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(pattern, value):
            if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
                amount = Decimal(value)
                out_of_range = amount <= 0 if positive else amount < 0
                too_precise = -amount.normalize().as_tuple().exponent > 2  # type: ignore[operator]
                if out_of_range or amount > max_value or too_precise:
                    return value  # well-formed but out of bounds: the checks below name the bound
        elif not isinstance(value, bool):
            return value
        raise PydanticCustomError("decimal_format", "expected a decimal amount with at most two decimals, e.g. 12.50")

    return Annotated[
        Decimal,
        BeforeValidator(plain),
        Field(gt=0, le=max_value, decimal_places=2) if positive else Field(ge=0, le=max_value, decimal_places=2),
        WithJsonSchema({"anyOf": [number, {"type": "string", "pattern": pattern}]}),
    ]


# What str.strip() removes, spelled out: `\s` differs between Python's and ECMA's regexes
# (\x85, \x1c-\x1f, \ufeff), and the OpenAPI patterns must mean the same to both.
WHITESPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
# Free text a person types: not blank once trimmed (the request models strip it), no NUL.
NonBlankText = Annotated[str, Field(pattern=rf"^[^\x00]*[^{WHITESPACE}\x00][^\x00]*$")]
# Text a consumer can store: Postgres keeps no NUL character in text or jsonb, so an event
# carrying one would be accepted at the edge and then fail in every consumer (dead-lettered).
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]
# A currency a client sends: checked against EMBUDO_CURRENCY (shared.rules.check_currency);
# the OpenAPI document states the configured code (shared.openapi fills in the pattern).
CURRENCY_SCHEMA_MARK = "x-embudo-currency"
CurrencyCode = Annotated[str, Field(min_length=3, max_length=3, json_schema_extra={CURRENCY_SCHEMA_MARK: True})]


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalise_email(email: str) -> str:
    return email.strip().lower()


class EventData(BaseModel):
    """Base of every event payload. Subclasses declare their type name and version."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)
    event_type: ClassVar[str]
    version: ClassVar[int] = 1


# --- ingest -------------------------------------------------------------------------


class Utm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Text | None = Field(default=None, max_length=200)
    medium: Text | None = Field(default=None, max_length=200)
    campaign: Text | None = Field(default=None, max_length=200)
    term: Text | None = Field(default=None, max_length=200)
    content: Text | None = Field(default=None, max_length=200)


class FormSubmission(EventData):
    event_type: ClassVar[str] = "form_submission"
    form_id: str
    email: str  # passed on as the visitor typed it; leads normalises
    name: str | None = None
    company: str | None = None
    phone: str | None = None
    page_url: str | None = None
    referrer: str | None = None
    anonymous_id: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    utm: Utm = Field(default_factory=Utm)


class PageView(EventData):
    """A visitor seeing a page: the top of the funnel. Keyed by anonymous_id."""

    event_type: ClassVar[str] = "page_view"
    anonymous_id: str
    url: str  # only its utm_* query parameters are kept: the others can carry personal data
    referrer: str | None = None
    title: str | None = None
    utm: Utm = Field(default_factory=Utm)  # given, or read from the url's utm_* parameters

    @property
    def has_utm(self) -> bool:
        return any(getattr(self.utm, name) for name in Utm.model_fields)


class Money(BaseModel):
    model_config = ConfigDict(frozen=True)
    amount: Amount
    currency: str


class CampaignEvent(EventData):
    event_type: ClassVar[str] = "campaign_event"
    campaign_id: str
    channel: str
    event: Literal["impression", "click", "spend"]
    count: int = 1
    cost: Money | None = None


# --- leads --------------------------------------------------------------------------


TouchKind = Literal["form_submission", "page_view"]


class Touch(BaseModel):
    """One marketing contact: a form submission, or a visit that carried UTM parameters
    (a page view of a visitor linked to the lead)."""

    model_config = ConfigDict(frozen=True)
    kind: TouchKind = "form_submission"
    campaign_id: str | None = None  # = utm.campaign
    channel: str | None = None  # = utm.medium
    source: str | None = None
    term: str | None = None
    content: str | None = None
    form_id: str | None = None
    page_url: str | None = None
    occurred_at: UtcDatetime


class Attribution(BaseModel):
    model_config = ConfigDict(frozen=True)
    first_touch: Touch
    last_touch: Touch


class LeadCreated(EventData):
    event_type: ClassVar[str] = "lead.created"
    lead_id: uuid.UUID
    email: str
    stage: LeadStage = "lead"
    score: int = 0
    created_at: UtcDatetime
    attribution: Attribution
    # The visitors (devices, by their anonymous ids) known to be this person, so far.
    anonymous_ids: list[str] = Field(default_factory=list)


class LeadTouched(EventData):
    event_type: ClassVar[str] = "lead.touched"
    lead_id: uuid.UUID
    email: str
    touch: Touch
    score: int
    # An older submission arriving late can move created_at and the first touch back.
    created_at: UtcDatetime
    attribution: Attribution
    anonymous_ids: list[str] = Field(default_factory=list)  # as in lead.created


class LeadStageChanged(EventData):
    event_type: ClassVar[str] = "lead.stage_changed"
    lead_id: uuid.UUID
    from_stage: LeadStage = Field(alias="from")
    to_stage: LeadStage = Field(alias="to")
    reason: str | None = None
    occurred_at: UtcDatetime
    created_at: UtcDatetime
    attribution: Attribution


# --- sales --------------------------------------------------------------------------


class DealEventData(EventData):
    """Every deal event names its lead and carries the lead's attribution, so metrics
    never joins across services."""

    deal_id: uuid.UUID
    lead_id: uuid.UUID
    lead_created_at: UtcDatetime
    attribution: Attribution


class DealCreated(DealEventData):
    event_type: ClassVar[str] = "deal.created"
    name: str | None = None
    stage: DealStage
    amount: Amount | None = None  # expected
    currency: str
    created_at: UtcDatetime
    expected_close_date: date | None = None
    probability: float | None = None  # of its stage, from sales' configuration
    # A deal opened by a lead reaching SQL is a handoff: sales accepts or rejects it.
    handoff: bool = False


class DealDetailsChanged(DealEventData):
    """The expected amount or close date of an open deal changed (both given as they are now)."""

    event_type: ClassVar[str] = "deal.details_changed"
    amount: Amount | None = None
    currency: str
    expected_close_date: date | None = None
    occurred_at: UtcDatetime


class DealAccepted(DealEventData):
    """Sales took the handoff (explicitly, or by working the deal: a move, a win, a loss)."""

    event_type: ClassVar[str] = "deal.accepted"
    occurred_at: UtcDatetime


class DealRejected(DealEventData):
    """Sales returned the handoff to marketing; the deal is closed as rejected."""

    event_type: ClassVar[str] = "deal.rejected"
    reason: str
    occurred_at: UtcDatetime


class Objection(BaseModel):
    """An objection as recorded (`text`) and the vocabulary's key it counts under
    (`other` when it matches none)."""

    model_config = ConfigDict(frozen=True)
    key: str
    text: str


class DealObjectionsRecorded(DealEventData):
    """Objections raised on an open or won deal (a lost deal's come with deal.lost)."""

    event_type: ClassVar[str] = "deal.objections_recorded"
    objections: list[Objection]
    occurred_at: UtcDatetime


class DealStageChanged(DealEventData):
    event_type: ClassVar[str] = "deal.stage_changed"
    from_stage: DealStage = Field(alias="from")
    to_stage: DealStage = Field(alias="to")
    probability: float | None = None
    occurred_at: UtcDatetime


class DealWon(DealEventData):
    event_type: ClassVar[str] = "deal.won"
    amount: Amount
    currency: str
    occurred_at: UtcDatetime
    first_win: bool  # the lead's first won deal: it became a new customer here


class DealLost(DealEventData):
    event_type: ClassVar[str] = "deal.lost"
    reason: str
    objections: list[str] = Field(default_factory=list)  # as recorded
    # The same objections with their vocabulary keys (events before the vocabulary: empty).
    normalised_objections: list[Objection] = Field(default_factory=list)
    occurred_at: UtcDatetime


class CustomerRevenueRecorded(EventData):
    event_type: ClassVar[str] = "customer.revenue_recorded"
    revenue_id: uuid.UUID
    lead_id: uuid.UUID
    amount: Amount
    currency: str
    kind: RevenueKind
    occurred_at: UtcDatetime
    attribution: Attribution


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.event_type: cls
    for cls in (
        FormSubmission,
        PageView,
        CampaignEvent,
        LeadCreated,
        LeadTouched,
        LeadStageChanged,
        DealCreated,
        DealDetailsChanged,
        DealAccepted,
        DealRejected,
        DealObjectionsRecorded,
        DealStageChanged,
        DealWon,
        DealLost,
        CustomerRevenueRecorded,
    )
}

# (event type, version it upgrades from) -> function turning that version's data into the next's.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


class UnknownEventType(ValueError):
    pass


def upcast(event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    current = EVENT_TYPES[event_type].version
    while version < current:
        data = UPCASTERS[(event_type, version)](data)
        version += 1
    return data


# Unbound on purpose: an unparametrised Envelope validates `data` as any JSON (from_bytes
# then picks the model by `type`); bound, pydantic would coerce it into a bare EventData.
DataT = TypeVar("DataT")


class Envelope(BaseModel, Generic[DataT]):
    """The metadata every event carries around its typed `data`. Handlers declare the
    payload they take: `async def on_deal_won(event: Envelope[DealWon], uow)`."""

    model_config = ConfigDict(frozen=True)
    event_id: uuid.UUID
    type: str
    version: int
    source: str
    occurred_at: UtcDatetime
    recorded_at: UtcDatetime
    key: str
    data: DataT

    @classmethod
    def wrap(
        cls,
        data: EventData,
        *,
        source: str,
        key: str,
        occurred_at: datetime,
        event_id: uuid.UUID | None = None,
    ) -> Envelope:
        return cls(
            event_id=event_id or uuid.uuid4(),
            type=data.event_type,
            version=data.version,
            source=source,
            occurred_at=occurred_at,
            recorded_at=utcnow(),
            key=key,
            data=data,
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Envelope:
        """Parse, upcast and validate. Raises ValueError (pydantic's ValidationError is
        one) or UnknownEventType for anything that is not a valid Embudo event."""
        envelope = cls.model_validate_json(raw)
        model = EVENT_TYPES.get(envelope.type)
        if model is None:
            raise UnknownEventType(f"unknown event type {envelope.type!r}")
        if not isinstance(envelope.data, dict):
            raise ValueError("event data must be an object")
        data = upcast(envelope.type, envelope.version, envelope.data)
        return envelope.model_copy(update={"data": model.model_validate(data), "version": model.version})
