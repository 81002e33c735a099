"""The sales HTTP API: deals through the pipeline, customers and their revenue."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared.app import DbPool
from shared.events import (
    Amount,
    CustomerRevenueRecorded,
    DealLost,
    DealStage,
    DealStageChanged,
    DealWon,
    Text,
    utcnow,
)
from shared.http import Problem, problem_response, require_api_token
from shared.topics import DEAL_EVENTS
from shared.uow import UnitOfWork, unit_of_work

from . import store
from .domain import (
    CLOSED_STAGES,
    DealClosed,
    InvalidField,
    OpenStage,
    check_currency,
    deal_envelope,
    effective_time,
    ensure_open,
    money,
    plan_stage_move,
    probability,
)
from .handlers import open_deal
from .settings import SalesSettings

router = APIRouter(prefix="/v1", tags=["sales"], dependencies=[Depends(require_api_token)])


def _settings(request: Request) -> SalesSettings:
    return request.app.state.settings


Settings = Annotated[SalesSettings, Depends(_settings)]

# --- request bodies ---------------------------------------------------------------------

# > 0, exact, at most 2 decimals ("12.50" or 12.5; never stored as a float).
PositiveAmount = Annotated[Decimal, Field(gt=0, max_digits=16, decimal_places=2)]
Currency = Annotated[str, Field(min_length=1, max_length=10)]


class Body(BaseModel):
    # Unknown fields are refused: a misspelt "ammount" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class HasOpenStage(Body):
    @field_validator("stage", mode="before", check_fields=False)
    @classmethod
    def _closing_has_its_own_endpoint(cls, value: object) -> object:
        if value in CLOSED_STAGES:
            raise ValueError(f"'{value}' closes a deal: use POST /v1/deals/{{deal_id}}/{value}")
        return value


class NewDeal(HasOpenStage):
    lead_id: uuid.UUID
    name: Text | None = Field(default=None, min_length=1, max_length=200)
    amount: PositiveAmount | None = None
    currency: Currency | None = None
    stage: OpenStage = "qualification"
    occurred_at: AwareDatetime | None = None


class DealChanges(HasOpenStage):
    stage: OpenStage | None = None
    amount: PositiveAmount | None = None
    currency: Currency | None = None
    expected_close_date: date | None = None
    occurred_at: AwareDatetime | None = None  # when the stage moved


class Win(Body):
    amount: PositiveAmount
    currency: Currency | None = None
    occurred_at: AwareDatetime | None = None


class Loss(Body):
    reason: Text = Field(min_length=1, max_length=500)
    objections: list[Annotated[Text, Field(min_length=1, max_length=200)]] = Field(default_factory=list, max_length=50)
    occurred_at: AwareDatetime | None = None


class NewRevenue(Body):
    amount: PositiveAmount
    currency: Currency | None = None
    kind: Literal["purchase", "renewal", "upsell"]
    occurred_at: AwareDatetime | None = None
    event_id: uuid.UUID | None = None  # idempotency key: the same one twice records once


# --- responses --------------------------------------------------------------------------


class StageEntry(BaseModel):
    from_stage: DealStage | None = Field(serialization_alias="from")
    to_stage: DealStage = Field(serialization_alias="to")
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
    updated_at: datetime


class DealDetail(DealOut):
    history: list[StageEntry]


class DealPage(BaseModel):
    items: list[DealOut]
    next_cursor: str | None


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


def deal_out(row: asyncpg.Record, settings: SalesSettings) -> DealOut:
    return DealOut(
        **{name: row[name] for name in DealOut.model_fields if name in row.keys()},
        probability=probability(row["stage"], settings.stage_probabilities),
        origin="lead_handoff" if row["source_event_id"] else "api",
    )


async def deal_detail(conn: asyncpg.Connection, deal_id: uuid.UUID, settings: SalesSettings) -> DealDetail:
    row = await store.get_deal(conn, deal_id)
    if row is None:
        raise Problem(404, f"There is no deal {deal_id}.")
    history = [StageEntry(**dict(h)) for h in await store.stage_history(conn, deal_id)]
    return DealDetail(**deal_out(row, settings).model_dump(), history=history)


# --- rule violations as problems --------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidField)
    async def _invalid(_: Request, exc: InvalidField) -> JSONResponse:
        return problem_response(
            422,
            exc.message,
            title="Validation failed",
            errors=[{"field": exc.field, "message": exc.message, "type": "value_error"}],
        )

    @app.exception_handler(DealClosed)
    async def _closed(_: Request, exc: DealClosed) -> JSONResponse:
        return problem_response(409, str(exc), title="Deal closed")


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


_MAX_SEQ = 2**63 - 1  # deals.seq is a bigserial


def decode_cursor(cursor: str) -> int:
    try:
        prefix, _, seq = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if prefix == "seq" and seq.isdigit() and int(seq) <= _MAX_SEQ:
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidField("cursor", "cursor is not one this API returned")


def _skew(settings: SalesSettings) -> timedelta:
    return timedelta(seconds=settings.clock_skew_seconds)


async def _deal_for_change(uow: UnitOfWork, deal_id: uuid.UUID) -> asyncpg.Record:
    deal = await store.get_deal(uow.conn, deal_id, for_update=True)
    if deal is None:
        raise Problem(404, f"There is no deal {deal_id}.")
    return deal


def _change_time(occurred_at: datetime | None, deal: asyncpg.Record, settings: SalesSettings) -> datetime:
    """A deal's history stays in time order: a change is not before the previous one."""
    first = deal["stage_entered_at"] == deal["created_at"]
    return effective_time(
        occurred_at,
        now=utcnow(),
        not_before=deal["stage_entered_at"],
        skew=_skew(settings),
        not_before_what="the deal's created_at" if first else "the deal's last stage change",
    )


async def _lead_facts(uow: UnitOfWork, lead_id: uuid.UUID):
    return store.lead_facts(await store.get_lead(uow.conn, lead_id))


# --- deals ------------------------------------------------------------------------------


@router.get("/deals", response_model=DealPage)
async def list_deals(
    pool: DbPool,
    settings: Settings,
    stage: DealStage | None = None,
    lead_id: uuid.UUID | None = None,
    campaign_id: Annotated[Text | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DealPage:
    before = decode_cursor(cursor) if cursor else None
    async with pool.acquire() as conn:
        rows = await store.list_deals(
            conn, stage=stage, lead_id=lead_id, campaign_id=campaign_id, before_seq=before, limit=limit + 1
        )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["seq"]) if len(rows) > limit else None
    return DealPage(items=[deal_out(r, settings) for r in page], next_cursor=next_cursor)


@router.get("/deals/{deal_id}", response_model=DealDetail)
async def get_deal(deal_id: uuid.UUID, pool: DbPool, settings: Settings) -> DealDetail:
    async with pool.acquire() as conn:
        return await deal_detail(conn, deal_id, settings)


@router.post("/deals", response_model=DealDetail, status_code=201)
async def create_deal(body: NewDeal, pool: DbPool, settings: Settings) -> DealDetail:
    currency = check_currency(body.currency, settings.currency)
    async with unit_of_work(pool) as uow:
        lead = await store.get_lead(uow.conn, body.lead_id)
        if lead is None:
            raise Problem(404, f"Sales knows no lead {body.lead_id} (yet): leads arrive through lead events.")
        facts = store.lead_facts(lead)
        created_at = effective_time(
            body.occurred_at,
            now=utcnow(),
            not_before=facts.created_at,
            not_before_what="the lead's created_at",
            skew=_skew(settings),
        )
        deal = await open_deal(
            uow,
            facts,
            stage=body.stage,
            created_at=created_at,
            currency=currency,
            name=body.name,
            amount=money(body.amount) if body.amount is not None else None,
        )
        return await deal_detail(uow.conn, deal["deal_id"], settings)


@router.patch("/deals/{deal_id}", response_model=DealDetail)
async def change_deal(deal_id: uuid.UUID, body: DealChanges, pool: DbPool, settings: Settings) -> DealDetail:
    if not body.model_fields_set - {"occurred_at"}:
        raise InvalidField("stage", "nothing to change: give stage, amount, currency or expected_close_date")
    if body.currency is not None:
        check_currency(body.currency, settings.currency)
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        move = plan_stage_move(deal["stage"], body.stage)  # closed deals: 409
        await store.update_details(
            uow.conn,
            deal_id,
            amount=money(body.amount) if body.amount is not None else None,
            expected_close_date=body.expected_close_date,
        )
        if move is not None:
            at = _change_time(body.occurred_at, deal, settings)
            await store.change_stage(uow.conn, deal_id, move.from_stage, move.to_stage, at)
            lead = await _lead_facts(uow, deal["lead_id"])
            changed = DealStageChanged(
                **lead.deal_fields(deal_id),
                from_stage=move.from_stage,
                to_stage=move.to_stage,
                probability=probability(move.to_stage, settings.stage_probabilities),
                occurred_at=at,
            )
            await uow.publish(DEAL_EVENTS, deal_envelope(changed, lead_id=lead.lead_id, occurred_at=at))
        return await deal_detail(uow.conn, deal_id, settings)


@router.post("/deals/{deal_id}/won", response_model=DealDetail)
async def win_deal(deal_id: uuid.UUID, body: Win, pool: DbPool, settings: Settings) -> DealDetail:
    currency = check_currency(body.currency, settings.currency)
    amount = money(body.amount)
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_open(deal["stage"])
        at = _change_time(body.occurred_at, deal, settings)
        await store.close_won(uow.conn, deal_id, deal["stage"], amount, at)
        first_win = await store.become_customer(uow.conn, deal["lead_id"], deal_id, at)
        lead = await _lead_facts(uow, deal["lead_id"])
        won = DealWon(
            **lead.deal_fields(deal_id), amount=amount, currency=currency, occurred_at=at, first_win=first_win
        )
        await uow.publish(DEAL_EVENTS, deal_envelope(won, lead_id=lead.lead_id, occurred_at=at))
        return await deal_detail(uow.conn, deal_id, settings)


@router.post("/deals/{deal_id}/lost", response_model=DealDetail)
async def lose_deal(deal_id: uuid.UUID, body: Loss, pool: DbPool, settings: Settings) -> DealDetail:
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_open(deal["stage"])
        at = _change_time(body.occurred_at, deal, settings)
        await store.close_lost(uow.conn, deal_id, deal["stage"], body.reason, body.objections, at)
        lead = await _lead_facts(uow, deal["lead_id"])
        lost = DealLost(**lead.deal_fields(deal_id), reason=body.reason, objections=body.objections, occurred_at=at)
        await uow.publish(DEAL_EVENTS, deal_envelope(lost, lead_id=lead.lead_id, occurred_at=at))
        return await deal_detail(uow.conn, deal_id, settings)


# --- customers --------------------------------------------------------------------------


def _same_revenue(existing: asyncpg.Record, lead_id: uuid.UUID, body: NewRevenue) -> bool:
    recorded = (existing["lead_id"], existing["amount"], existing["kind"])
    return recorded == (lead_id, money(body.amount), body.kind)


@router.post("/customers/{lead_id}/revenue", response_model=RevenueOut, status_code=201)
async def record_revenue(
    lead_id: uuid.UUID, body: NewRevenue, pool: DbPool, settings: Settings, response: Response
) -> RevenueOut:
    currency = check_currency(body.currency, settings.currency)
    revenue_id = body.event_id or uuid.uuid4()
    async with unit_of_work(pool) as uow:
        # The customer row is locked so this and a concurrent retry of it queue up.
        lead = await store.get_lead(uow.conn, lead_id)
        if lead is None:
            raise Problem(404, f"Sales knows no lead {lead_id} (yet): leads arrive through lead events.")
        customer = await store.get_customer(uow.conn, lead_id, for_update=True)
        existing = await store.get_revenue(uow.conn, revenue_id)
        if existing is not None:
            if not _same_revenue(existing, lead_id, body):
                raise Problem(409, f"event_id {revenue_id} already recorded different revenue.")
            response.status_code = 200  # a retry: the record as it was made the first time
            return RevenueOut(**dict(existing))
        if customer is None:
            raise Problem(
                409, f"Lead {lead_id} has no won deal: revenue is recorded for customers only.", title="Not a customer"
            )
        at = effective_time(
            body.occurred_at,
            now=utcnow(),
            not_before=customer["customer_since"],
            not_before_what="the lead became a customer",
            skew=_skew(settings),
        )
        record = await store.insert_revenue(
            uow.conn,
            revenue_id=revenue_id,
            lead_id=lead_id,
            amount=money(body.amount),
            currency=currency,
            kind=body.kind,
            occurred_at=at,
        )
        if record is None:  # the same event_id, recorded meanwhile for another customer
            raise Problem(409, f"event_id {revenue_id} already recorded different revenue.")
        facts = store.lead_facts(lead)
        recorded = CustomerRevenueRecorded(
            revenue_id=revenue_id,
            lead_id=lead_id,
            amount=record["amount"],
            currency=currency,
            kind=body.kind,
            occurred_at=at,
            attribution=facts.attribution,
        )
        await uow.publish(DEAL_EVENTS, deal_envelope(recorded, lead_id=lead_id, occurred_at=at))
        return RevenueOut(**dict(record))


@router.get("/customers/{lead_id}", response_model=CustomerOut)
async def get_customer(lead_id: uuid.UUID, pool: DbPool, settings: Settings) -> CustomerOut:
    async with pool.acquire() as conn:
        customer = await store.get_customer(conn, lead_id)
        if customer is None:
            raise Problem(404, f"Lead {lead_id} is not a customer (no won deal).")
        lead = await store.get_lead(conn, lead_id)
        return CustomerOut(
            lead_id=lead_id,
            email=lead["email"],
            customer_since=customer["customer_since"],
            first_deal_id=customer["first_deal_id"],
            won_deals=[deal_out(r, settings) for r in await store.won_deals(conn, lead_id)],
            revenue=[RevenueOut(**dict(r)) for r in await store.customer_revenue(conn, lead_id)],
        )
