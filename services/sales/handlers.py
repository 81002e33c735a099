"""Lead events in: keep the lead replica, and hand a lead that reaches SQL over as a deal."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from shared.events import DealCreated, Envelope, LeadCreated, LeadStageChanged, LeadTouched
from shared.topics import DEAL_EVENTS
from shared.uow import UnitOfWork

from . import store
from .domain import HANDOFF_STAGE, LeadFacts, deal_envelope


async def open_deal(
    uow: UnitOfWork,
    lead: LeadFacts,
    *,
    stage: str,
    created_at: datetime,
    currency: str,
    name: str | None = None,
    amount: Decimal | None = None,
    source_event_id: uuid.UUID | None = None,
):
    """Create a deal and queue deal.created in the same transaction. Returns the deal row,
    or None when the handoff event `source_event_id` already created one."""
    deal_id = uuid.uuid4()
    deal = await store.insert_deal(
        uow.conn,
        deal_id=deal_id,
        lead_id=lead.lead_id,
        name=name,
        stage=stage,
        amount=amount,
        currency=currency,
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
    )
    await uow.publish(DEAL_EVENTS, deal_envelope(created, lead_id=lead.lead_id, occurred_at=created_at))
    return deal


async def on_lead_profile(event: Envelope, uow: UnitOfWork) -> None:
    """lead.created and lead.touched: both carry the lead's current email, created_at and attribution."""
    data: LeadCreated | LeadTouched = event.data
    await store.upsert_lead(
        uow.conn,
        lead_id=data.lead_id,
        email=data.email,
        created_at=data.created_at,
        attribution=data.attribution,
        stage=None,  # the stage comes only from lead.stage_changed, which may already be applied
    )


async def on_lead_stage_changed(event: Envelope, uow: UnitOfWork, *, currency: str) -> None:
    data: LeadStageChanged = event.data
    await store.upsert_lead(
        uow.conn,
        lead_id=data.lead_id,
        email=None,
        created_at=data.created_at,
        attribution=data.attribution,
        stage=data.to_stage,
    )
    if data.to_stage == "sql":
        lead = LeadFacts(data.lead_id, data.created_at, data.attribution)
        await open_deal(
            uow,
            lead,
            stage=HANDOFF_STAGE,
            created_at=data.occurred_at,
            currency=currency,
            source_event_id=event.event_id,
        )


def build_handlers(currency: str) -> dict:
    async def handle_stage_changed(event: Envelope, uow: UnitOfWork) -> None:
        await on_lead_stage_changed(event, uow, currency=currency)

    return {
        "lead.created": on_lead_profile,
        "lead.touched": on_lead_profile,
        "lead.stage_changed": handle_stage_changed,
    }
