"""Projecting events into metrics' fact tables.

A handler only notes its event's facts in the transaction's `ProjectionBatch`; the batch is
written once, just before the transaction commits (`uow.before_commit`), so a consumer batch
of hundreds of events costs a handful of statements instead of one round trip per event.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
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
    Objection,
    PageView,
)
from shared.rules import LEAD_STAGE_RANK, LeadStage, utm_value
from shared.uow import UnitOfWork

from . import store
from .store import (
    CampaignFacts,
    DealFacts,
    DealValueFacts,
    DisqualificationFacts,
    LeadFacts,
    ObjectionFacts,
    PageViewFacts,
    ProjectionBatch,
    RevenueFacts,
    VisitorLink,
)

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


def _reached(stage: LeadStage, at: datetime) -> dict[str, object]:
    """The stage facts of a lead being at `stage` at `at`: its rank, and its arrival at mql
    and sql when the stage is one of them or beyond (merged as the earliest)."""
    rank = LEAD_STAGE_RANK[stage]
    return {"stage_rank": rank, "mql_at": at if rank >= 1 else None, "sql_at": at if rank >= 2 else None}


async def on_lead_created(event: Envelope[LeadCreated], uow: UnitOfWork) -> None:
    data = event.data
    lead = LeadFacts(data.lead_id, data.attribution, data.created_at, **_reached(data.stage, data.created_at))
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
    lead = LeadFacts(data.lead_id, data.attribution, data.created_at, **_reached(data.to_stage, data.occurred_at))
    batch = batch_of(event, uow)
    batch.leads.append(lead)
    reason = (data.reason or "").strip()
    if data.to_stage == "disqualified" and reason:
        batch.disqualifications.append(DisqualificationFacts(event.event_id, data.lead_id, data.occurred_at, reason))


def _deal(event: Envelope[DealEventData], uow: UnitOfWork, deal: DealFacts, won_at=None,
          reached_at=None) -> ProjectionBatch:  # fmt: skip
    """Every deal event makes its lead an opportunity; the lead's row may not exist yet. A
    deal's creation (`reached_at`) is also the lead's arrival at mql and sql."""
    data = event.data
    batch = batch_of(event, uow)
    batch.leads.append(LeadFacts(data.lead_id, data.attribution, data.lead_created_at, has_deal=True,
                                 first_won_at=won_at, mql_at=reached_at, sql_at=reached_at))  # fmt: skip
    batch.deals.append(deal)
    return batch


def _probability(value: float | None) -> Decimal | None:
    # As written in the event (0.2, not the binary float nearest to it).
    return None if value is None else Decimal(str(value))


async def on_deal_created(event: Envelope[DealCreated], uow: UnitOfWork) -> None:
    data = event.data
    deal = DealFacts(data.deal_id, data.lead_id, created_at=data.created_at, handoff=data.handoff)
    batch = _deal(event, uow, deal, reached_at=data.created_at)
    batch.deal_values += [
        DealValueFacts(data.deal_id, "details", data.created_at, event.event_id, data.amount, data.currency,
                       data.expected_close_date),
        DealValueFacts(data.deal_id, "stage", data.created_at, event.event_id,
                       probability=_probability(data.probability)),
    ]  # fmt: skip


async def on_deal_details_changed(event: Envelope[DealDetailsChanged], uow: UnitOfWork) -> None:
    data = event.data
    batch = _deal(event, uow, DealFacts(data.deal_id, data.lead_id))
    batch.deal_values.append(DealValueFacts(data.deal_id, "details", data.occurred_at, event.event_id, data.amount,
                                            data.currency, data.expected_close_date))  # fmt: skip


async def on_deal_stage_changed(event: Envelope[DealStageChanged], uow: UnitOfWork) -> None:
    data = event.data
    batch = _deal(event, uow, DealFacts(data.deal_id, data.lead_id))
    batch.deal_values.append(DealValueFacts(data.deal_id, "stage", data.occurred_at, event.event_id,
                                            probability=_probability(data.probability)))  # fmt: skip


async def on_deal_accepted(event: Envelope[DealAccepted], uow: UnitOfWork) -> None:
    data = event.data
    _deal(event, uow, DealFacts(data.deal_id, data.lead_id, accepted_at=data.occurred_at))


async def on_deal_rejected(event: Envelope[DealRejected], uow: UnitOfWork) -> None:
    data = event.data
    deal = DealFacts(data.deal_id, data.lead_id, rejected_at=data.occurred_at, rejection_reason=data.reason)
    _deal(event, uow, deal)


def _objections(deal_id, objections: list[Objection]) -> list[ObjectionFacts]:
    return [ObjectionFacts(deal_id, objection.key, objection.text) for objection in objections]


async def on_deal_objections_recorded(event: Envelope[DealObjectionsRecorded], uow: UnitOfWork) -> None:
    data = event.data
    batch = _deal(event, uow, DealFacts(data.deal_id, data.lead_id))
    batch.objections += _objections(data.deal_id, data.objections)


async def on_deal_won(event: Envelope[DealWon], uow: UnitOfWork) -> None:
    data = event.data
    deal = DealFacts(data.deal_id, data.lead_id, won_at=data.occurred_at, won_amount=data.amount,
                     currency=data.currency)  # fmt: skip
    _deal(event, uow, deal, won_at=data.occurred_at)


async def on_deal_lost(event: Envelope[DealLost], uow: UnitOfWork) -> None:
    data = event.data
    deal = DealFacts(data.deal_id, data.lead_id, lost_at=data.occurred_at, lost_reason=data.reason,
                     objections=data.objections)  # fmt: skip
    batch = _deal(event, uow, deal)
    # Events from before the vocabulary carry the texts alone: they count under `other`.
    keyed = data.normalised_objections or [Objection(key="other", text=text) for text in data.objections]
    batch.objections += _objections(data.deal_id, keyed)


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
    DealDetailsChanged: on_deal_details_changed,
    DealAccepted: on_deal_accepted,
    DealRejected: on_deal_rejected,
    DealObjectionsRecorded: on_deal_objections_recorded,
    DealWon: on_deal_won,
    DealLost: on_deal_lost,
    CustomerRevenueRecorded: on_revenue_recorded,
}

# On the consumed topics, but not part of any KPI.
IGNORED: tuple[type[EventData], ...] = ()
