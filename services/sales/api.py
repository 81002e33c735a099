"""The sales HTTP API: deals through the pipeline (and sales' answer to a handoff), objections,
customers and their revenue."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.app import DbPool
from shared.auth import require_api_token
from shared.errors import InvalidField
from shared.events import Amount, CurrencyCode, IsoDate, NonBlankText, Text, UtcDatetime, money_input, utcnow
from shared.openapi import problems
from shared.pagination import Page, cursor_param, decode_cursor, page_of
from shared.rules import (
    CLOSED_DEAL_STAGES,
    DealStage,
    OpenDealStage,
    RevenueKind,
    check_currency,
    handoff_due_at,
    within_handoff_sla,
)

from . import service
from .domain import probability
from .settings import SalesSettings, Settings

router = APIRouter(
    prefix="/v1", tags=["sales"], dependencies=[Depends(require_api_token)], responses=problems(401, 403, 422)
)
DealCursor = cursor_param(int)  # deals page on seq, the order sales recorded them

# --- request bodies ---------------------------------------------------------------------

# > 0, exact, at most 2 decimals ("12.50" or 12.5; never stored as a float).
PositiveAmount = money_input(positive=True, integer_digits=14)


class Body(BaseModel):
    # Unknown fields are refused: a misspelt "ammount" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class HasOpenStage(Body):
    @field_validator("stage", mode="before", check_fields=False)
    @classmethod
    def _closing_has_its_own_endpoint(cls, value: object) -> object:
        if value in CLOSED_DEAL_STAGES:
            raise ValueError(f"'{value}' closes a deal: use POST /v1/deals/{{deal_id}}/{value}")
        return value


class NewDeal(HasOpenStage):
    lead_id: uuid.UUID
    name: NonBlankText | None = Field(default=None, max_length=200)
    amount: PositiveAmount | None = None
    currency: CurrencyCode | None = None
    stage: OpenDealStage = "qualification"
    expected_close_date: IsoDate | None = None
    occurred_at: UtcDatetime | None = None


CHANGEABLE = ("stage", "amount", "currency", "expected_close_date")


class DealChanges(HasOpenStage):
    # At least one change; occurred_at alone only says when.
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": [name]} for name in CHANGEABLE]})
    stage: OpenDealStage | None = None
    amount: PositiveAmount | None = None
    currency: CurrencyCode | None = None
    expected_close_date: IsoDate | None = None
    occurred_at: UtcDatetime | None = None  # when the stage moved (or, without a move, the details changed)


class Win(Body):
    amount: PositiveAmount
    currency: CurrencyCode | None = None
    occurred_at: UtcDatetime | None = None


ObjectionText = Annotated[NonBlankText, Field(max_length=200)]


class Loss(Body):
    reason: NonBlankText = Field(max_length=500)
    objections: list[ObjectionText] = Field(default_factory=list, max_length=50)
    occurred_at: UtcDatetime | None = None


class Acceptance(Body):
    occurred_at: UtcDatetime | None = None


class Rejection(Body):
    reason: NonBlankText = Field(max_length=500)
    occurred_at: UtcDatetime | None = None


class NewObjections(Body):
    objections: list[ObjectionText] = Field(min_length=1, max_length=50)
    occurred_at: UtcDatetime | None = None


class NewRevenue(Body):
    amount: PositiveAmount
    currency: CurrencyCode | None = None
    kind: RevenueKind
    occurred_at: UtcDatetime | None = None
    event_id: uuid.UUID | None = None  # idempotency key: the same one twice records once


# --- responses --------------------------------------------------------------------------


class StageEntry(BaseModel):
    from_stage: DealStage | None = Field(serialization_alias="from")
    to_stage: DealStage = Field(serialization_alias="to")
    occurred_at: datetime
    recorded_at: datetime


class HandoffSla(BaseModel):
    due_at: datetime = Field(description="created_at + EMBUDO_SLA_ACCEPT_HOURS")
    responded_at: datetime | None = Field(description="when sales accepted or rejected the handoff; null: not yet")
    within_sla: bool | None = Field(
        description="answered by due_at; false once due_at passed unanswered; null while unanswered and not yet due"
    )


class RecordedObjection(BaseModel):
    key: str = Field(description="the objections vocabulary's key it counts under (GET /v1/objections); other: none")
    text: str = Field(description="as recorded")
    stage: DealStage = Field(description="the deal's stage when it was recorded (lost: with the loss)")
    occurred_at: datetime
    recorded_at: datetime


class DealOut(BaseModel):
    deal_id: uuid.UUID
    lead_id: uuid.UUID
    name: str | None
    stage: DealStage
    probability: float
    amount: Amount | None
    currency: str
    expected_close_date: date | None
    created_at: datetime
    stage_entered_at: datetime
    closed_at: datetime | None
    lost_reason: str | None
    objections: list[str]
    origin: Literal["lead_handoff", "api"]
    handoff: bool = Field(
        description="a deal opened by a lead reaching SQL (since handoffs are answered): sales accepts or rejects it"
    )
    accepted_at: datetime | None = Field(
        description="when sales took the deal: its answer to a handoff (null: not yet or rejected); created_at for"
        " a deal sales opened itself"
    )
    rejected_at: datetime | None
    rejection_reason: str | None
    sla: HandoffSla | None = Field(description="the handoff's answer against EMBUDO_SLA_ACCEPT_HOURS; null: no handoff")
    updated_at: datetime


class DealDetail(DealOut):
    history: list[StageEntry]
    recorded_objections: list[RecordedObjection] = Field(
        description="every objection recorded on the deal (open, won, or with its loss), oldest first"
    )


class DealPage(Page[DealOut]):
    pass


class RevenueOut(BaseModel):
    revenue_id: uuid.UUID
    lead_id: uuid.UUID
    amount: Amount
    currency: str
    kind: str
    occurred_at: datetime
    recorded_at: datetime


class CustomerOut(BaseModel):
    lead_id: uuid.UUID
    email: str | None
    customer_since: datetime
    first_deal_id: uuid.UUID
    won_deals: list[DealOut]
    revenue: list[RevenueOut]


class VocabularyEntry(BaseModel):
    key: str
    label: str
    synonyms: list[str]


class ObjectionVocabulary(BaseModel):
    items: list[VocabularyEntry] = Field(
        description="the canonical objections (EMBUDO_OBJECTIONS_CONFIG), then `other`: what matches none"
    )


def handoff_sla(row: asyncpg.Record, settings: SalesSettings) -> HandoffSla | None:
    if not row["handoff"]:
        return None
    due_at = handoff_due_at(row["created_at"], settings.sla_accept)
    responded_at = row["accepted_at"] or row["rejected_at"]
    if responded_at is not None:
        within = within_handoff_sla(row["created_at"], responded_at, settings.sla_accept)
    else:
        within = None if utcnow() <= due_at else False
    return HandoffSla(due_at=due_at, responded_at=responded_at, within_sla=within)


def deal_out(row: asyncpg.Record, settings: SalesSettings) -> DealOut:
    return DealOut(
        **{name: row[name] for name in DealOut.model_fields if name in row.keys()},
        probability=probability(row["stage"], settings.stage_probabilities),
        origin="lead_handoff" if row["source_event_id"] else "api",
        sla=handoff_sla(row, settings),
    )


def deal_detail(view: service.DealView, settings: SalesSettings) -> DealDetail:
    history = [StageEntry(**dict(h)) for h in view.history]
    objections = [RecordedObjection(**dict(o)) for o in view.objections]
    return DealDetail(**deal_out(view.deal, settings).model_dump(), history=history, recorded_objections=objections)


# --- deals ------------------------------------------------------------------------------


@router.get("/deals", response_model=DealPage)
async def list_deals(
    pool: DbPool,
    settings: Settings,
    stage: DealStage | None = None,
    lead_id: uuid.UUID | None = None,
    campaign_id: Annotated[Text | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: DealCursor = None,
) -> DealPage:
    """Deals oldest first, in the order sales recorded them."""
    after = decode_cursor(cursor, int)[0] if cursor else None
    rows = await service.list_deals(
        pool, stage=stage, lead_id=lead_id, campaign_id=campaign_id, after_seq=after, limit=limit + 1
    )
    page, next_cursor = page_of(rows, limit, lambda r: (r["seq"],))
    return DealPage(items=[deal_out(r, settings) for r in page], next_cursor=next_cursor)


@router.get("/deals/{deal_id}", response_model=DealDetail, responses=problems(404))
async def get_deal(deal_id: uuid.UUID, pool: DbPool, settings: Settings) -> DealDetail:
    return deal_detail(await service.deal_view(pool, deal_id), settings)


@router.post("/deals", response_model=DealDetail, status_code=201, responses=problems(400, 404, 409, 413))
async def create_deal(body: NewDeal, pool: DbPool, settings: Settings) -> DealDetail:
    view = await service.create_deal(
        pool,
        lead_id=body.lead_id,
        stage=body.stage,
        currency=check_currency(body.currency, settings.currency),
        name=body.name,
        amount=body.amount,
        expected_close_date=body.expected_close_date,
        occurred_at=body.occurred_at,
        stage_probabilities=settings.stage_probabilities,
        clock_skew=settings.clock_skew,
    )
    return deal_detail(view, settings)


@router.patch("/deals/{deal_id}", response_model=DealDetail, responses=problems(400, 404, 409, 413))
async def change_deal(deal_id: uuid.UUID, body: DealChanges, pool: DbPool, settings: Settings) -> DealDetail:
    if not body.model_fields_set & set(CHANGEABLE):
        raise InvalidField("stage", "nothing to change: give stage, amount, currency or expected_close_date")
    if body.currency is not None:
        check_currency(body.currency, settings.currency)
    view = await service.change_deal(
        pool,
        deal_id,
        stage=body.stage,
        amount=body.amount,
        expected_close_date=body.expected_close_date,
        occurred_at=body.occurred_at,
        stage_probabilities=settings.stage_probabilities,
        clock_skew=settings.clock_skew,
    )
    return deal_detail(view, settings)


@router.post("/deals/{deal_id}/won", response_model=DealDetail, responses=problems(400, 404, 409, 413))
async def win_deal(deal_id: uuid.UUID, body: Win, pool: DbPool, settings: Settings) -> DealDetail:
    currency = check_currency(body.currency, settings.currency)
    view = await service.win_deal(
        pool,
        deal_id,
        amount=body.amount,
        currency=currency,
        occurred_at=body.occurred_at,
        clock_skew=settings.clock_skew,
    )
    return deal_detail(view, settings)


@router.post("/deals/{deal_id}/lost", response_model=DealDetail, responses=problems(400, 404, 409, 413))
async def lose_deal(deal_id: uuid.UUID, body: Loss, pool: DbPool, settings: Settings) -> DealDetail:
    view = await service.lose_deal(
        pool,
        deal_id,
        reason=body.reason,
        objections=body.objections,
        occurred_at=body.occurred_at,
        vocabulary=settings.objections,
        clock_skew=settings.clock_skew,
    )
    return deal_detail(view, settings)


@router.post("/deals/{deal_id}/accept", response_model=DealDetail, responses=problems(400, 404, 409, 413))
async def accept_deal(
    deal_id: uuid.UUID, pool: DbPool, settings: Settings, body: Acceptance | None = None
) -> DealDetail:
    """Sales takes a handoff (a deal opened by a lead reaching SQL); the body is optional.
    409 when the deal is no handoff, already answered, or closed."""
    occurred_at = body.occurred_at if body is not None else None
    view = await service.accept_deal(pool, deal_id, occurred_at=occurred_at, clock_skew=settings.clock_skew)
    return deal_detail(view, settings)


@router.post("/deals/{deal_id}/reject", response_model=DealDetail, responses=problems(400, 404, 409, 413))
async def reject_deal(deal_id: uuid.UUID, body: Rejection, pool: DbPool, settings: Settings) -> DealDetail:
    """Sales returns a handoff to marketing: the deal closes as `rejected` and the lead goes back
    to mql. 409 when the deal is no handoff, already accepted, or closed."""
    view = await service.reject_deal(
        pool, deal_id, reason=body.reason, occurred_at=body.occurred_at, clock_skew=settings.clock_skew
    )
    return deal_detail(view, settings)


@router.post("/deals/{deal_id}/objections", response_model=DealDetail, responses=problems(400, 404, 409, 413))
async def record_objections(deal_id: uuid.UUID, body: NewObjections, pool: DbPool, settings: Settings) -> DealDetail:
    """Objections raised on an open or a won deal (a lost deal's come with POST .../lost; a
    lost or rejected deal: 409), each counted under its vocabulary key."""
    view = await service.record_objections(
        pool,
        deal_id,
        objections=body.objections,
        occurred_at=body.occurred_at,
        vocabulary=settings.objections,
        clock_skew=settings.clock_skew,
    )
    return deal_detail(view, settings)


@router.get("/objections", response_model=ObjectionVocabulary)
async def objection_vocabulary(settings: Settings) -> ObjectionVocabulary:
    """The objections vocabulary: each canonical objection's key, label and synonyms. An
    objection counts under the entry whose key, label or a synonym it spells, ignoring letter
    case, accents, punctuation and extra spaces; anything else under `other`."""
    items = [VocabularyEntry(key=k, label=label, synonyms=syn) for k, label, syn in settings.objections.labels()]
    return ObjectionVocabulary(items=items)


# --- customers --------------------------------------------------------------------------


@router.post(
    "/customers/{lead_id}/revenue",
    response_model=RevenueOut,
    status_code=201,
    responses={
        200: {"model": RevenueOut, "description": "A retry: the record as first made"},
        **problems(400, 404, 409, 413),
    },
)
async def record_revenue(
    lead_id: uuid.UUID, body: NewRevenue, pool: DbPool, settings: Settings, response: Response
) -> RevenueOut:
    recorded = await service.record_revenue(
        pool,
        lead_id,
        amount=body.amount,
        currency=check_currency(body.currency, settings.currency),
        kind=body.kind,
        occurred_at=body.occurred_at,
        revenue_id=body.event_id,
        clock_skew=settings.clock_skew,
    )
    if not recorded.new:
        response.status_code = 200  # a retry: the record as it was made the first time
    return RevenueOut(**dict(recorded.record))


@router.get("/customers/{lead_id}", response_model=CustomerOut, responses=problems(404))
async def get_customer(lead_id: uuid.UUID, pool: DbPool, settings: Settings) -> CustomerOut:
    view = await service.customer_view(pool, lead_id)
    return CustomerOut(
        lead_id=lead_id,
        email=view.lead["email"],
        customer_since=view.customer["customer_since"],
        first_deal_id=view.customer["first_deal_id"],
        won_deals=[deal_out(r, settings) for r in view.won_deals],
        revenue=[RevenueOut(**dict(r)) for r in view.revenue],
    )
