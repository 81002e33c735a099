"""The sales use cases: the handoff of a lead that reaches SQL (and sales' answer to it),
deals through the pipeline, objections, customers and their revenue. Each command runs in
one unit of work and queues the deal events it causes in the outbox of that same
transaction; the routes and the event handlers both call these functions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

import asyncpg

from shared.errors import Conflict, NotFound
from shared.events import (
    Attribution,
    CustomerRevenueRecorded,
    DealAccepted,
    DealCreated,
    DealDetailsChanged,
    DealLost,
    DealObjectionsRecorded,
    DealRejected,
    DealStageChanged,
    DealWon,
    utcnow,
)
from shared.rules import DealStage, OpenDealStage
from shared.topics import DEAL_EVENTS
from shared.uow import UnitOfWork, unit_of_work

from . import store
from .domain import (
    HANDOFF_STAGE,
    DealLead,
    NotACustomer,
    ObjectionVocabulary,
    deal_envelope,
    effective_time,
    ensure_open,
    ensure_takes_objections,
    ensure_unanswered_handoff,
    money,
    plan_stage_move,
    probability,
)


@dataclass(frozen=True)
class DealView:
    deal: asyncpg.Record
    history: list[asyncpg.Record]  # oldest first
    objections: list[asyncpg.Record]  # in the order recorded


async def _view(conn: asyncpg.Connection, deal_id: uuid.UUID) -> DealView:
    deal = await store.get_deal(conn, deal_id)
    if deal is None:
        raise NotFound(f"There is no deal {deal_id}.")
    return DealView(deal, await store.stage_history(conn, deal_id), await store.objections(conn, deal_id))


async def _known_lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> DealLead:
    lead = await store.get_lead(conn, lead_id)
    if lead is None:
        raise NotFound(f"Sales knows no lead {lead_id} (yet): leads arrive through lead events.")
    return store.deal_lead(lead)


async def _deal_for_change(uow: UnitOfWork, deal_id: uuid.UUID) -> asyncpg.Record:
    deal = await store.get_deal(uow.conn, deal_id, for_update=True)
    if deal is None:
        raise NotFound(f"There is no deal {deal_id}.")
    return deal


def _change_time(occurred_at: datetime | None, deal: asyncpg.Record, clock_skew: timedelta) -> datetime:
    """A deal's history stays in time order: a change is not before the previous one."""
    first = deal["stage_entered_at"] == deal["created_at"]
    return effective_time(
        occurred_at,
        now=utcnow(),
        not_before=deal["stage_entered_at"],
        not_before_what="the deal's created_at" if first else "the deal's last stage change",
        clock_skew=clock_skew,
    )


def _since_creation(occurred_at: datetime | None, deal: asyncpg.Record, clock_skew: timedelta) -> datetime:
    """For what is not a stage change (new details, objections): not before the deal was opened."""
    return effective_time(
        occurred_at,
        now=utcnow(),
        not_before=deal["created_at"],
        not_before_what="the deal's created_at",
        clock_skew=clock_skew,
    )


async def _publish(uow: UnitOfWork, data, lead: DealLead, at: datetime) -> None:
    await uow.publish(DEAL_EVENTS, deal_envelope(data, lead_id=lead.lead_id, occurred_at=at))


async def _take_handoff(uow: UnitOfWork, deal: asyncpg.Record, lead: DealLead, at: datetime) -> None:
    """Working a handoff nobody has answered (a move, a win, a loss) accepts it at that
    moment; deal.accepted comes before the event of the change itself."""
    if deal["handoff"] and deal["accepted_at"] is None:
        await store.accept(uow.conn, deal["deal_id"], at)
        await _publish(uow, DealAccepted(**lead.deal_fields(deal["deal_id"]), occurred_at=at), lead, at)


# --- the lead replica and the handoff ------------------------------------------------------


async def note_lead(
    uow: UnitOfWork, lead_id: uuid.UUID, email: str | None, created_at: datetime, attribution: Attribution
) -> None:
    """A lead's current email, created_at and attribution (lead.created, lead.touched)."""
    # The stage comes only from lead.stage_changed, which may already be applied.
    await store.upsert_lead(
        uow.conn, lead_id=lead_id, email=email, created_at=created_at, attribution=attribution, stage=None
    )


async def note_stage_change(
    uow: UnitOfWork,
    lead: DealLead,
    to_stage: str,
    occurred_at: datetime,
    *,
    handoff_event_id: uuid.UUID,
    currency: str,
    stage_probabilities: dict[str, float],
) -> None:
    """A lead moved; reaching SQL hands it over to sales as a deal (once per transition: a
    lead marketing hands over again after a rejection gets a new deal)."""
    await store.upsert_lead(
        uow.conn,
        lead_id=lead.lead_id,
        email=None,
        created_at=lead.created_at,
        attribution=lead.attribution,
        stage=to_stage,
    )
    if to_stage == "sql":
        await open_deal(
            uow,
            lead,
            stage=HANDOFF_STAGE,
            created_at=occurred_at,
            currency=currency,
            stage_probabilities=stage_probabilities,
            source_event_id=handoff_event_id,
        )


async def open_deal(
    uow: UnitOfWork,
    lead: DealLead,
    *,
    stage: OpenDealStage,
    created_at: datetime,
    currency: str,
    stage_probabilities: dict[str, float],
    name: str | None = None,
    amount: Decimal | None = None,
    expected_close_date: date | None = None,
    source_event_id: uuid.UUID | None = None,
) -> asyncpg.Record | None:
    """Create a deal and queue deal.created in the same transaction. Returns the deal row,
    or None when the handoff event `source_event_id` already created one. A deal from a
    handoff awaits sales' answer; one sales opens itself needs none (handoff: false)."""
    deal_id = uuid.uuid4()
    deal = await store.insert_deal(
        uow.conn,
        deal_id=deal_id,
        lead_id=lead.lead_id,
        name=name,
        stage=stage,
        amount=amount,
        currency=currency,
        expected_close_date=expected_close_date,
        created_at=created_at,
        source_event_id=source_event_id,
    )
    if deal is None:
        return None
    created = DealCreated(
        **lead.deal_fields(deal_id),
        name=name,
        stage=stage,
        amount=amount,
        currency=currency,
        created_at=created_at,
        expected_close_date=expected_close_date,
        probability=probability(stage, stage_probabilities),
        handoff=deal["handoff"],
    )
    await _publish(uow, created, lead, created_at)
    return deal


# --- deals ---------------------------------------------------------------------------------


async def create_deal(
    pool: asyncpg.Pool,
    *,
    lead_id: uuid.UUID,
    stage: OpenDealStage,
    currency: str,
    name: str | None,
    amount: Decimal | None,
    expected_close_date: date | None,
    occurred_at: datetime | None,
    stage_probabilities: dict[str, float],
    clock_skew: timedelta,
) -> DealView:
    """A deal opened by hand (not from a handoff: sales took it by opening it)."""
    async with unit_of_work(pool) as uow:
        lead = await _known_lead(uow.conn, lead_id)
        created_at = effective_time(
            occurred_at,
            now=utcnow(),
            not_before=lead.created_at,
            not_before_what="the lead's created_at",
            clock_skew=clock_skew,
        )
        deal = await open_deal(
            uow,
            lead,
            stage=stage,
            created_at=created_at,
            currency=currency,
            stage_probabilities=stage_probabilities,
            name=name,
            amount=money(amount) if amount is not None else None,
            expected_close_date=expected_close_date,
        )
        return await _view(uow.conn, deal["deal_id"])


async def change_deal(
    pool: asyncpg.Pool,
    deal_id: uuid.UUID,
    *,
    stage: OpenDealStage | None,
    amount: Decimal | None,
    expected_close_date: date | None,
    occurred_at: datetime | None,
    stage_probabilities: dict[str, float],
    clock_skew: timedelta,
) -> DealView:
    """Move an open deal and/or change its details. A move publishes deal.stage_changed
    (after deal.accepted when it takes an unanswered handoff), a new amount or expected close
    date deal.details_changed; asking for what the deal already is publishes nothing.
    `occurred_at` dates whatever changes (a move: not before the last stage change)."""
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        move = plan_stage_move(deal["stage"], stage)  # closed deals: 409
        updated = await store.update_details(
            uow.conn,
            deal_id,
            amount=money(amount) if amount is not None else None,
            expected_close_date=expected_close_date,
        )
        details = (updated["amount"], updated["expected_close_date"])
        new_details = details != (deal["amount"], deal["expected_close_date"])
        if move is None and not new_details:
            return await _view(uow.conn, deal_id)
        at = _change_time(occurred_at, deal, clock_skew) if move else _since_creation(occurred_at, deal, clock_skew)
        lead = await _known_lead(uow.conn, deal["lead_id"])
        if move is not None:
            await _take_handoff(uow, deal, lead, at)
        if new_details:
            changed_details = DealDetailsChanged(
                **lead.deal_fields(deal_id),
                amount=details[0],
                currency=deal["currency"],
                expected_close_date=details[1],
                occurred_at=at,
            )
            await _publish(uow, changed_details, lead, at)
        if move is not None:
            await store.change_stage(uow.conn, deal_id, move.from_stage, move.to_stage, at)
            changed = DealStageChanged(
                **lead.deal_fields(deal_id),
                from_stage=move.from_stage,
                to_stage=move.to_stage,
                probability=probability(move.to_stage, stage_probabilities),
                occurred_at=at,
            )
            await _publish(uow, changed, lead, at)
        return await _view(uow.conn, deal_id)


async def accept_deal(
    pool: asyncpg.Pool, deal_id: uuid.UUID, *, occurred_at: datetime | None, clock_skew: timedelta
) -> DealView:
    """Sales takes a handoff: publishes deal.accepted."""
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_open(deal["stage"])
        ensure_unanswered_handoff(handoff=deal["handoff"], accepted_at=deal["accepted_at"])
        at = _change_time(occurred_at, deal, clock_skew)
        await _take_handoff(uow, deal, await _known_lead(uow.conn, deal["lead_id"]), at)
        return await _view(uow.conn, deal_id)


async def reject_deal(
    pool: asyncpg.Pool, deal_id: uuid.UUID, *, reason: str, occurred_at: datetime | None, clock_skew: timedelta
) -> DealView:
    """Sales returns a handoff to marketing: the deal closes as rejected (neither won nor
    lost) and deal.rejected tells leads to move the lead back to mql."""
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_open(deal["stage"])
        ensure_unanswered_handoff(handoff=deal["handoff"], accepted_at=deal["accepted_at"])
        at = _change_time(occurred_at, deal, clock_skew)
        await store.reject(uow.conn, deal_id, deal["stage"], reason, at)
        lead = await _known_lead(uow.conn, deal["lead_id"])
        await _publish(uow, DealRejected(**lead.deal_fields(deal_id), reason=reason, occurred_at=at), lead, at)
        return await _view(uow.conn, deal_id)


async def record_objections(
    pool: asyncpg.Pool,
    deal_id: uuid.UUID,
    *,
    objections: list[str],
    occurred_at: datetime | None,
    vocabulary: ObjectionVocabulary,
    clock_skew: timedelta,
) -> DealView:
    """Objections raised on an open or a won deal, each under its vocabulary key:
    publishes deal.objections_recorded."""
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_takes_objections(deal["stage"])
        at = _since_creation(occurred_at, deal, clock_skew)
        normalised = vocabulary.normalise(objections)
        await store.add_objections(uow.conn, deal_id, normalised, deal["stage"], at)
        lead = await _known_lead(uow.conn, deal["lead_id"])
        recorded = DealObjectionsRecorded(**lead.deal_fields(deal_id), objections=normalised, occurred_at=at)
        await _publish(uow, recorded, lead, at)
        return await _view(uow.conn, deal_id)


async def win_deal(
    pool: asyncpg.Pool,
    deal_id: uuid.UUID,
    *,
    amount: Decimal,
    currency: str,
    occurred_at: datetime | None,
    clock_skew: timedelta,
) -> DealView:
    """Close a deal as won; the lead's first win makes it a customer."""
    amount = money(amount)
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_open(deal["stage"])
        at = _change_time(occurred_at, deal, clock_skew)
        lead = await _known_lead(uow.conn, deal["lead_id"])
        await _take_handoff(uow, deal, lead, at)
        await store.close_won(uow.conn, deal_id, deal["stage"], amount, at)
        first_win = await store.become_customer(uow.conn, deal["lead_id"], deal_id, at)
        won = DealWon(
            **lead.deal_fields(deal_id), amount=amount, currency=currency, occurred_at=at, first_win=first_win
        )
        await _publish(uow, won, lead, at)
        return await _view(uow.conn, deal_id)


async def lose_deal(
    pool: asyncpg.Pool,
    deal_id: uuid.UUID,
    *,
    reason: str,
    objections: list[str],
    occurred_at: datetime | None,
    vocabulary: ObjectionVocabulary,
    clock_skew: timedelta,
) -> DealView:
    """Close a deal as lost, with what sales tells marketing: the reason and the objections
    (as recorded, and each under its vocabulary key)."""
    async with unit_of_work(pool) as uow:
        deal = await _deal_for_change(uow, deal_id)
        ensure_open(deal["stage"])
        at = _change_time(occurred_at, deal, clock_skew)
        lead = await _known_lead(uow.conn, deal["lead_id"])
        await _take_handoff(uow, deal, lead, at)
        normalised = vocabulary.normalise(objections)
        await store.close_lost(uow.conn, deal_id, deal["stage"], reason, objections, at)
        await store.add_objections(uow.conn, deal_id, normalised, "lost", at)
        lost = DealLost(
            **lead.deal_fields(deal_id),
            reason=reason,
            objections=objections,
            normalised_objections=normalised,
            occurred_at=at,
        )
        await _publish(uow, lost, lead, at)
        return await _view(uow.conn, deal_id)


async def deal_view(pool: asyncpg.Pool, deal_id: uuid.UUID) -> DealView:
    async with pool.acquire() as conn:
        return await _view(conn, deal_id)


async def list_deals(
    pool: asyncpg.Pool,
    *,
    stage: DealStage | None,
    lead_id: uuid.UUID | None,
    campaign_id: str | None,
    after_seq: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await store.list_deals(
            conn, stage=stage, lead_id=lead_id, campaign_id=campaign_id, after_seq=after_seq, limit=limit
        )


# --- customers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRevenue:
    record: asyncpg.Record
    new: bool  # False: a retry with the same event_id, answered with the first record


async def record_revenue(
    pool: asyncpg.Pool,
    lead_id: uuid.UUID,
    *,
    amount: Decimal,
    currency: str,
    kind: str,
    occurred_at: datetime | None,
    revenue_id: uuid.UUID | None,
    clock_skew: timedelta,
) -> RecordedRevenue:
    """Revenue of a customer; `revenue_id` (the client's event_id) makes a retry record once."""
    revenue_id = revenue_id or uuid.uuid4()
    amount = money(amount)
    async with unit_of_work(pool) as uow:
        lead = await _known_lead(uow.conn, lead_id)
        # The customer row is locked so this and a concurrent retry of it queue up.
        customer = await store.get_customer(uow.conn, lead_id, for_update=True)
        existing = await store.get_revenue(uow.conn, revenue_id)
        if existing is not None:
            if (existing["lead_id"], existing["amount"], existing["kind"]) != (lead_id, amount, kind):
                raise Conflict(f"event_id {revenue_id} already recorded different revenue.")
            return RecordedRevenue(existing, new=False)
        if customer is None:
            raise NotACustomer(f"Lead {lead_id} has no won deal: revenue is recorded for customers only.")
        at = effective_time(
            occurred_at,
            now=utcnow(),
            not_before=customer["customer_since"],
            not_before_what="the lead became a customer",
            clock_skew=clock_skew,
        )
        record = await store.insert_revenue(
            uow.conn,
            revenue_id=revenue_id,
            lead_id=lead_id,
            amount=amount,
            currency=currency,
            kind=kind,
            occurred_at=at,
        )
        if record is None:  # the same event_id, recorded meanwhile for another customer
            raise Conflict(f"event_id {revenue_id} already recorded different revenue.")
        recorded = CustomerRevenueRecorded(
            revenue_id=revenue_id,
            lead_id=lead_id,
            amount=record["amount"],
            currency=currency,
            kind=kind,
            occurred_at=at,
            attribution=lead.attribution,
        )
        await uow.publish(DEAL_EVENTS, deal_envelope(recorded, lead_id=lead_id, occurred_at=at))
        return RecordedRevenue(record, new=True)


@dataclass(frozen=True)
class CustomerView:
    lead: asyncpg.Record
    customer: asyncpg.Record
    won_deals: list[asyncpg.Record]
    revenue: list[asyncpg.Record]


async def customer_view(pool: asyncpg.Pool, lead_id: uuid.UUID) -> CustomerView:
    async with pool.acquire() as conn:
        customer = await store.get_customer(conn, lead_id)
        if customer is None:
            raise NotFound(f"Lead {lead_id} is not a customer (no won deal).")
        return CustomerView(
            lead=await store.get_lead(conn, lead_id),
            customer=customer,
            won_deals=await store.won_deals(conn, lead_id),
            revenue=await store.customer_revenue(conn, lead_id),
        )
