"""The sales rules: the deal pipeline, money, and when things may have happened. No I/O."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.errors import Conflict, InvalidField, OutOfOrder
from shared.events import Attribution, Envelope, EventData, Objection
from shared.rules import CLOSED_DEAL_STAGES, OPEN_DEAL_STAGES, OpenDealStage

HANDOFF_STAGE: OpenDealStage = "qualification"
CENT = Decimal("0.01")
SOURCE = "sales"


class DealClosed(Conflict):
    """Won, lost and rejected deals are immutable."""

    title = "Deal closed"

    def __init__(self, stage: str) -> None:
        super().__init__(f"The deal is {stage}; closed deals cannot change.")
        self.stage = stage


class NotAHandoff(Conflict):
    """Only a deal opened by a lead reaching SQL is a handoff sales answers."""

    title = "Not a handoff"


class HandoffAnswered(Conflict):
    """A handoff is answered once: accepted, or rejected."""

    title = "Handoff already answered"


class NoObjectionsHere(Conflict):
    """Objections are recorded on open and won deals."""

    title = "Deal closed"


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


def ensure_unanswered_handoff(*, handoff: bool, accepted_at: datetime | None) -> None:
    """Accepting or rejecting needs a handoff sales has not answered yet (a rejected one is
    closed: ensure_open refuses it first)."""
    if not handoff:
        raise NotAHandoff("Sales opened this deal itself: it is no handoff to accept or reject.")
    if accepted_at is not None:
        raise HandoffAnswered(
            f"The handoff was accepted at {accepted_at.isoformat()}; an accepted deal is won or lost, not rejected."
        )


def ensure_takes_objections(stage: str) -> None:
    """Objections are recorded on open and won deals; a lost deal's came with its loss, and
    a rejected handoff was never worked."""
    if stage in CLOSED_DEAL_STAGES and stage != "won":
        raise NoObjectionsHere(
            f"The deal is {stage}; objections are recorded on open and won deals (a loss brings its own)."
        )


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
    if stage in CLOSED_DEAL_STAGES:  # lost, or rejected: a handoff sales did not take
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


# --- objections ---------------------------------------------------------------------------

# What an objection that matches no entry of the vocabulary counts under (its text is kept).
OTHER_OBJECTION = "other"
OTHER_LABEL = "Other"
_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc")  # "don't" and "dont" are one phrase


def objection_phrase(text: str) -> str:
    """What identifies an objection: its words without accents, letter case, punctuation or
    extra whitespace ("Too expensive!", " too  EXPENSIVE" and "too-expensive" are one phrase)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().translate(_APOSTROPHES)
    return " ".join("".join(c if c.isalnum() else " " for c in plain).split())


class VocabularyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    synonyms: list[Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=list)


ObjectionKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class ObjectionVocabulary(BaseModel):
    """The objections file (services/sales/objections.yaml), validated: canonical objections
    by key, each with its label and synonyms. An objection counts under the key whose key,
    label or synonym is the same phrase (objection_phrase); anything else under `other`."""

    model_config = ConfigDict(extra="forbid")
    objections: dict[ObjectionKey, VocabularyEntry]

    @model_validator(mode="after")
    def _each_phrase_names_one_key(self) -> ObjectionVocabulary:
        if OTHER_OBJECTION in self.objections:
            raise ValueError(f"'{OTHER_OBJECTION}' is reserved for the objections that match no entry")
        owners: dict[str, str] = {}
        for key, entry in self.objections.items():
            for spelling in (key.replace("_", " "), entry.label, *entry.synonyms):
                phrase = objection_phrase(spelling)
                if not phrase:
                    raise ValueError(f"{key}: {spelling!r} has no letters or digits to match")
                if owners.setdefault(phrase, key) != key:
                    raise ValueError(f"{spelling!r} would count under both {owners[phrase]} and {key}")
        return self

    @cached_property
    def _keys_by_phrase(self) -> dict[str, str]:
        return {
            objection_phrase(spelling): key
            for key, entry in self.objections.items()
            for spelling in (key.replace("_", " "), entry.label, *entry.synonyms)
        }

    def key_of(self, text: str) -> str:
        return self._keys_by_phrase.get(objection_phrase(text), OTHER_OBJECTION)

    def normalise(self, texts: Iterable[str]) -> list[Objection]:
        """Each objection as recorded, with the key it counts under."""
        return [Objection(key=self.key_of(text), text=text) for text in texts]

    def labels(self) -> list[tuple[str, str, list[str]]]:
        """(key, label, synonyms) of every entry, then `other`."""
        entries = [(key, entry.label, list(entry.synonyms)) for key, entry in self.objections.items()]
        return [*entries, (OTHER_OBJECTION, OTHER_LABEL, [])]
