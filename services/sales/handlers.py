"""The events sales consumes, each to its use case in services/sales/service.py."""

from __future__ import annotations

from functools import partial

from shared.consumer import Handlers
from shared.events import Envelope, LeadCreated, LeadStageChanged, LeadTouched
from shared.uow import UnitOfWork

from . import service
from .domain import DealLead
from .settings import DEFAULT_STAGE_PROBABILITIES


async def on_lead_profile(event: Envelope[LeadCreated | LeadTouched], uow: UnitOfWork) -> None:
    """Both carry the lead's current email, created_at and attribution."""
    data = event.data
    await service.note_lead(uow, data.lead_id, data.email, data.created_at, data.attribution)


async def on_lead_stage_changed(
    event: Envelope[LeadStageChanged],
    uow: UnitOfWork,
    *,
    currency: str,
    stage_probabilities: dict[str, float] = DEFAULT_STAGE_PROBABILITIES,
) -> None:
    data = event.data
    lead = DealLead(data.lead_id, data.created_at, data.attribution)
    await service.note_stage_change(
        uow,
        lead,
        data.to_stage,
        data.occurred_at,
        handoff_event_id=event.event_id,
        currency=currency,
        stage_probabilities=stage_probabilities,
    )


def build_handlers(currency: str, stage_probabilities: dict[str, float] = DEFAULT_STAGE_PROBABILITIES) -> Handlers:
    return {
        LeadCreated: on_lead_profile,
        LeadTouched: on_lead_profile,
        LeadStageChanged: partial(on_lead_stage_changed, currency=currency, stage_probabilities=stage_probabilities),
    }
