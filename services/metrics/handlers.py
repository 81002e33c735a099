"""Projecting events into metrics' fact tables.

A handler only notes its event's facts in the transaction's `ProjectionBatch`; the batch is
written once, just before the transaction commits (`uow.before_commit`), so a consumer batch
of hundreds of events costs a handful of statements instead of one round trip per event.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal
from weakref import WeakKeyDictionary

from prometheus_client import Gauge

from shared.consumer import Handlers
from shared.events import (
    CampaignEvent,
    CustomerRevenueRecorded,
    DealAccepted,
    DealCreated,
    DealDetailsChanged,
    DealEventData,
    DealLost,
    DealObjectionsRecorded,
    DealRejected,
    DealStageChanged,
    DealWon,
    Envelope,
    EventData,
    LeadCreated,
    LeadStageChanged,
    LeadTouched,
    PageView,
)
from shared.rules import LEAD_STAGE_RANK, utm_value
from shared.uow import UnitOfWork

from . import store
from .store import CampaignFacts, DealFacts, LeadFacts, PageViewFacts, ProjectionBatch, RevenueFacts, VisitorLink

_batches: WeakKeyDictionary[UnitOfWork, ProjectionBatch] = WeakKeyDictionary()

# The newest event time this replica has written into the projection, and how far behind
# now it is: with traffic flowing that is the projection's delay; without, it grows.
_projected_as_of: list[float] = []  # one value once something was projected
PROJECTION_DELAY = Gauge(
    "embudo_projection_delay_seconds", "now - the newest event time this replica has projected (as_of)"
)
PROJECTION_DELAY.set_function(lambda: time.time() - _projected_as_of[0] if _projected_as_of else math.nan)


async def _write(uow: UnitOfWork, batch: ProjectionBatch) -> None:
    await store.write_batch(uow.conn, batch)
    if batch.as_of is not None:
        newest = batch.as_of.timestamp()
        _projected_as_of[:] = [max([newest, *_projected_as_of])]


def batch_of(event: Envelope, uow: UnitOfWork) -> ProjectionBatch:
    """This transaction's batch (created, and its write scheduled, on first use)."""
    batch = _batches.get(uow)
    if batch is None:
        batch = _batches[uow] = ProjectionBatch()
        uow.before_commit(lambda: _write(uow, batch))
    batch.applied(event.occurred_at)
    return batch


async def on_campaign_event(event: Envelope[CampaignEvent], uow: UnitOfWork) -> None:
    data = event.data
    batch_of(event, uow).campaign.append(CampaignFacts(
        event.event_id,
        event.occurred_at,  # campaign events have no time of their own in `data`
        data.campaign_id,
        data.channel,
        impressions=data.count if data.event == "impression" else 0,
        clicks=data.count if data.event == "click" else 0,
        spend=data.cost.amount if data.cost else Decimal(0),
        currency=data.cost.currency if data.cost else None,
    ))  # fmt: skip


async def on_page_view(event: Envelope[PageView], uow: UnitOfWork) -> None:
    data = event.data
    if not data.anonymous_id.strip():
        batch_of(event, uow)  # names no visitor: nothing to count, but applied all the same
        return
    batch_of(event, uow).page_views.append(PageViewFacts(
        event.event_id, data.anonymous_id, event.occurred_at, utm_value(data.utm.campaign), utm_value(data.utm.medium)
    ))  # fmt: skip


def _links(batch: ProjectionBatch, data: LeadCreated | LeadTouched) -> None:
    # Each event lists the lead's visitors known so far: merged as a union.
    batch.links.extend(VisitorLink(anonymous_id, data.lead_id) for anonymous_id in data.anonymous_ids
                       if anonymous_id.strip())  # fmt: skip


async def on_lead_created(event: Envelope[LeadCreated], uow: UnitOfWork) -> None:
    data = event.data
    lead = LeadFacts(data.lead_id, data.attribution, data.created_at, LEAD_STAGE_RANK[data.stage])
    batch = batch_of(event, uow)
    batch.leads.append(lead)
    _links(batch, data)


async def on_lead_touched(event: Envelope[LeadTouched], uow: UnitOfWork) -> None:
    # A late, older submission may move created_at and the first touch back: merged as such.
    data = event.data
    batch = batch_of(event, uow)
    batch.leads.append(LeadFacts(data.lead_id, data.attribution, data.created_at))
    _links(batch, data)


async def on_lead_stage_changed(event: Envelope[LeadStageChanged], uow: UnitOfWork) -> None:
    data = event.data
    lead = LeadFacts(data.lead_id, data.attribution, data.created_at, LEAD_STAGE_RANK[data.to_stage])
    batch_of(event, uow).leads.append(lead)


def _deal(event: Envelope[DealEventData], uow: UnitOfWork, deal: DealFacts, won_at=None) -> None:
    """Every deal event makes its lead an opportunity; the lead's row may not exist yet."""
    data = event.data
    batch = batch_of(event, uow)
    batch.leads.append(
        LeadFacts(data.lead_id, data.attribution, data.lead_created_at, has_deal=True, first_won_at=won_at)
    )
    batch.deals.append(deal)


async def on_deal_created(event: Envelope[DealCreated], uow: UnitOfWork) -> None:
    data = event.data
    _deal(event, uow, DealFacts(data.deal_id, data.lead_id, created_at=data.created_at))


async def on_deal_stage_changed(event: Envelope[DealStageChanged], uow: UnitOfWork) -> None:
    data = event.data
    _deal(event, uow, DealFacts(data.deal_id, data.lead_id))


async def on_deal_won(event: Envelope[DealWon], uow: UnitOfWork) -> None:
    data = event.data
    deal = DealFacts(data.deal_id, data.lead_id, won_at=data.occurred_at, won_amount=data.amount,
                     currency=data.currency)  # fmt: skip
    _deal(event, uow, deal, won_at=data.occurred_at)


async def on_deal_lost(event: Envelope[DealLost], uow: UnitOfWork) -> None:
    data = event.data
    deal = DealFacts(data.deal_id, data.lead_id, lost_at=data.occurred_at, lost_reason=data.reason,
                     objections=data.objections)  # fmt: skip
    _deal(event, uow, deal)


async def on_revenue_recorded(event: Envelope[CustomerRevenueRecorded], uow: UnitOfWork) -> None:
    data = event.data
    batch = batch_of(event, uow)
    batch.leads.append(LeadFacts(data.lead_id, data.attribution))
    batch.revenue.append(
        RevenueFacts(data.revenue_id, data.lead_id, data.amount, data.currency, data.kind, data.occurred_at)
    )


HANDLERS: Handlers = {
    PageView: on_page_view,
    CampaignEvent: on_campaign_event,
    LeadCreated: on_lead_created,
    LeadTouched: on_lead_touched,
    LeadStageChanged: on_lead_stage_changed,
    DealCreated: on_deal_created,
    DealStageChanged: on_deal_stage_changed,
    DealWon: on_deal_won,
    DealLost: on_deal_lost,
    CustomerRevenueRecorded: on_revenue_recorded,
}

# On the consumed topics, but not (yet) part of any KPI.
IGNORED: tuple[type[EventData], ...] = (DealDetailsChanged, DealAccepted, DealRejected, DealObjectionsRecorded)
