"""Projecting events into metrics' fact tables: one statement per event, no reads."""

from __future__ import annotations

from decimal import Decimal

from services.metrics import store
from services.metrics.domain import STAGE_RANK
from services.metrics.store import DealFacts, LeadFacts
from shared.events import (
    CampaignEvent,
    CustomerRevenueRecorded,
    DealCreated,
    DealEventData,
    DealLost,
    DealStageChanged,
    DealWon,
    Envelope,
    LeadCreated,
    LeadStageChanged,
    LeadTouched,
)
from shared.uow import UnitOfWork


async def on_campaign_event(event: Envelope, uow: UnitOfWork) -> None:
    data: CampaignEvent = event.data
    await store.apply_campaign_fact(
        uow.conn,
        event.event_id,
        event.occurred_at,  # campaign events have no time of their own in `data`
        data.campaign_id,
        data.channel,
        impressions=data.count if data.event == "impression" else 0,
        clicks=data.count if data.event == "click" else 0,
        spend=data.cost.amount if data.cost else Decimal(0),
        currency=data.cost.currency if data.cost else None,
    )


async def on_lead_created(event: Envelope, uow: UnitOfWork) -> None:
    data: LeadCreated = event.data
    lead = LeadFacts(data.lead_id, data.attribution, data.created_at, STAGE_RANK[data.stage])
    await store.apply_lead_facts(uow.conn, event.occurred_at, lead)


async def on_lead_touched(event: Envelope, uow: UnitOfWork) -> None:
    # A late, older submission may move created_at and the first touch back: merged as such.
    data: LeadTouched = event.data
    await store.apply_lead_facts(uow.conn, event.occurred_at, LeadFacts(data.lead_id, data.attribution, data.created_at))


async def on_lead_stage_changed(event: Envelope, uow: UnitOfWork) -> None:
    data: LeadStageChanged = event.data
    lead = LeadFacts(data.lead_id, data.attribution, data.created_at, STAGE_RANK[data.to_stage])
    await store.apply_lead_facts(uow.conn, event.occurred_at, lead)


def _deal_lead(data: DealEventData, first_won_at=None) -> LeadFacts:
    """Every deal makes its lead an opportunity; the lead's row may not exist yet."""
    return LeadFacts(data.lead_id, data.attribution, data.lead_created_at, has_deal=True, first_won_at=first_won_at)


async def on_deal_created(event: Envelope, uow: UnitOfWork) -> None:
    data: DealCreated = event.data
    await store.apply_deal_facts(uow.conn, event.occurred_at, _deal_lead(data), DealFacts(data.deal_id, data.created_at))


async def on_deal_stage_changed(event: Envelope, uow: UnitOfWork) -> None:
    data: DealStageChanged = event.data
    await store.apply_deal_facts(uow.conn, event.occurred_at, _deal_lead(data), DealFacts(data.deal_id))


async def on_deal_won(event: Envelope, uow: UnitOfWork) -> None:
    data: DealWon = event.data
    deal = DealFacts(data.deal_id, won_at=data.occurred_at, won_amount=data.amount, currency=data.currency)
    await store.apply_deal_facts(uow.conn, event.occurred_at, _deal_lead(data, data.occurred_at), deal)


async def on_deal_lost(event: Envelope, uow: UnitOfWork) -> None:
    data: DealLost = event.data
    deal = DealFacts(data.deal_id, lost_at=data.occurred_at, lost_reason=data.reason, objections=data.objections)
    await store.apply_deal_facts(uow.conn, event.occurred_at, _deal_lead(data), deal)


async def on_revenue_recorded(event: Envelope, uow: UnitOfWork) -> None:
    data: CustomerRevenueRecorded = event.data
    await store.apply_revenue(
        uow.conn, event.occurred_at, LeadFacts(data.lead_id, data.attribution),
        data.revenue_id, data.amount, data.currency, data.kind, data.occurred_at,
    )  # fmt: skip


HANDLERS = {
    "campaign_event": on_campaign_event,
    "lead.created": on_lead_created,
    "lead.touched": on_lead_touched,
    "lead.stage_changed": on_lead_stage_changed,
    "deal.created": on_deal_created,
    "deal.stage_changed": on_deal_stage_changed,
    "deal.won": on_deal_won,
    "deal.lost": on_deal_lost,
    "customer.revenue_recorded": on_revenue_recorded,
}
