"""The sales rules: the deal pipeline, money, and when things may have happened. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from shared.errors import Conflict, InvalidField, OutOfOrder
from shared.events import Attribution, Envelope, EventData
from shared.rules import CLOSED_DEAL_STAGES, OPEN_DEAL_STAGES, OpenDealStage

HANDOFF_STAGE: OpenDealStage = "qualification"
CENT = Decimal("0.01")
SOURCE = "sales"


class DealClosed(Conflict):
    """Won and lost deals are immutable."""

    title = "Deal closed"

    def __init__(self, stage: str) -> None:
        super().__init__(f"The deal is {stage}; closed deals cannot change.")
        self.stage = stage


class NotACustomer(Conflict):
    """Revenue is recorded for customers (leads with a won deal) only."""

    title = "Not a customer"


def money(amount: Decimal) -> Decimal:
    """Exact cents. Callers validate at most 2 decimals first, so this never rounds."""
    return amount.quantize(CENT)


def effective_time(
    occurred_at: datetime | None,
    *,
    now: datetime,
    not_before: datetime | None,
    not_before_what: str,
    clock_skew: timedelta,
) -> datetime:
    """When a change happened: `now` unless the client backfills an earlier moment.

    A moment in the future (beyond the clock skew) is invalid, one before `not_before` is out
    of order; within the skew it counts as now, so nothing stored lies in the future.
    """
    if occurred_at is None:
        return now if not_before is None or now >= not_before else not_before
    if occurred_at > now + clock_skew:
        raise InvalidField("occurred_at", f"occurred_at {occurred_at.isoformat()} lies in the future")
    if not_before is not None and occurred_at < not_before:
        raise OutOfOrder(
            "occurred_at",
            f"occurred_at {occurred_at.isoformat()} is before {not_before_what} ({not_before.isoformat()})",
        )
    return min(occurred_at, now)


def ensure_open(stage: str) -> None:
    if stage in CLOSED_DEAL_STAGES:
        raise DealClosed(stage)


@dataclass(frozen=True)
class StageMove:
    from_stage: str
    to_stage: str


def plan_stage_move(current: str, target: str | None) -> StageMove | None:
    """Any move between open stages is allowed, backwards too (a negotiation can fall
    back to a new proposal). Asking for the current stage changes nothing (None), so a
    retried PATCH is harmless. Closed deals refuse every change."""
    ensure_open(current)
    if target is None or target == current:
        return None
    if target not in OPEN_DEAL_STAGES:
        raise InvalidField("stage", "only open stages can be set here; close a deal with /won or /lost")
    return StageMove(current, target)


def probability(stage: str, open_stage_probabilities: Mapping[str, float]) -> float:
    if stage == "won":
        return 1.0
    if stage == "lost":
        return 0.0
    return open_stage_probabilities[stage]


@dataclass(frozen=True)
class DealLead:
    """What every deal event repeats about its lead, so metrics needs no joins."""

    lead_id: uuid.UUID
    created_at: datetime
    attribution: Attribution

    def deal_fields(self, deal_id: uuid.UUID) -> dict:
        return {
            "deal_id": deal_id,
            "lead_id": self.lead_id,
            "lead_created_at": self.created_at,
            "attribution": self.attribution,
        }


def deal_envelope(data: EventData, *, lead_id: uuid.UUID, occurred_at: datetime) -> Envelope:
    """Deal and revenue events are keyed by lead_id: a customer's history stays in order."""
    return Envelope.wrap(data, source=SOURCE, key=str(lead_id), occurred_at=occurred_at)
