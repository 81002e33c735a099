"""The events leads consumes, each to its use case in services/leads/service.py."""

from __future__ import annotations

from functools import partial

from shared.consumer import Handlers
from shared.events import (
    DealRejected,
    Envelope,
    EventData,
    FormSubmission,
    PageView,
)
from shared.topics import DEAL_EVENTS
from shared.uow import UnitOfWork

from . import service
from .domain import ScoringRules


async def on_form_submission(
    event: Envelope[FormSubmission], uow: UnitOfWork, *, rules: ScoringRules, mql_threshold: int | None
) -> None:
    # Applied with the batch's other submissions when its transaction commits.
    await service.queue_submission(uow, event, rules, mql_threshold)


async def on_page_view(
    event: Envelope[PageView], uow: UnitOfWork, *, rules: ScoringRules, mql_threshold: int | None
) -> None:
    await service.record_page_view(uow, event, rules, mql_threshold)


async def on_deal_rejected(event: Envelope[DealRejected], uow: UnitOfWork) -> None:
    data = event.data
    await service.return_handoff(uow, data.lead_id, data.reason, data.occurred_at)


# Of sales' deal events leads needs only the rejected handoff, which returns a lead to it.
IGNORED: tuple[type[EventData], ...] = tuple(t for t in DEAL_EVENTS.event_types if t is not DealRejected)


def build_handlers(rules: ScoringRules, mql_threshold: int | None) -> Handlers:
    return {
        FormSubmission: partial(on_form_submission, rules=rules, mql_threshold=mql_threshold),
        PageView: partial(on_page_view, rules=rules, mql_threshold=mql_threshold),
        DealRejected: on_deal_rejected,
    }
