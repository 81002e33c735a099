"""The sales rules: the deal pipeline, money, and when things may have happened. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from shared.events import Attribution, Envelope, EventData

OpenStage = Literal["qualification", "proposal", "negotiation"]
OPEN_STAGES: tuple[str, ...] = ("qualification", "proposal", "negotiation")
CLOSED_STAGES: tuple[str, ...] = ("won", "lost")
HANDOFF_STAGE: OpenStage = "qualification"
CENT = Decimal("0.01")
SOURCE = "sales"


class InvalidField(ValueError):
    """Input that is well-formed but breaks a rule: answered with 422 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class DealClosed(Exception):
    """Won and lost deals are immutable."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"The deal is {stage}; closed deals cannot change.")
        self.stage = stage


def money(amount: Decimal) -> Decimal:
    """Exact cents. Callers validate at most 2 decimals first, so this never rounds."""
    return amount.quantize(CENT)


def check_currency(currency: str | None, expected: str) -> str:
    """Embudo counts money in one currency (EMBUDO_CURRENCY); absent means that one."""
    if currency is None:
        return expected
    if currency.strip().upper() != expected.upper():
        raise InvalidField("currency", f"currency must be {expected} (EMBUDO_CURRENCY); {currency!r} is not accepted")
    return expected


def effective_time(
    occurred_at: datetime | None,
    *,
    now: datetime,
    not_before: datetime | None,
    not_before_what: str,
    skew: timedelta,
) -> datetime:
    """When a change happened: `now` unless the client backfills an earlier moment.

    A moment in the future (beyond a small clock skew) or before `not_before` is refused;
    within the skew it counts as now, so nothing stored lies in the future.
    """
    if occurred_at is None:
        return now if not_before is None or now >= not_before else not_before
    if occurred_at > now + skew:
        raise InvalidField("occurred_at", f"occurred_at {occurred_at.isoformat()} lies in the future")
    if not_before is not None and occurred_at < not_before:
        raise InvalidField(
            "occurred_at",
            f"occurred_at {occurred_at.isoformat()} is before {not_before_what} ({not_before.isoformat()})",
        )
    return min(occurred_at, now)


def ensure_open(stage: str) -> None:
    if stage in CLOSED_STAGES:
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
    if target not in OPEN_STAGES:
        raise InvalidField("stage", "only open stages can be set here; close a deal with /won or /lost")
    return StageMove(current, target)


def probability(stage: str, open_stage_probabilities: Mapping[str, float]) -> float:
    if stage == "won":
        return 1.0
    if stage == "lost":
        return 0.0
    return open_stage_probabilities[stage]


@dataclass(frozen=True)
class LeadFacts:
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
