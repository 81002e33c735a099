"""Rules more than one service applies: the stages, the currency, how far a clock may be off.

Each is defined here once and imported wherever it is needed
(tests/unit/test_rules_in_one_place.py fails when a service spells one out again).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from shared.errors import InvalidField

# --- stages ---------------------------------------------------------------------------

LeadStage = Literal["lead", "mql", "sql", "disqualified"]
LEAD_STAGES: tuple[LeadStage, ...] = get_args(LeadStage)
# How far a lead got in the funnel. Reaching a later stage counts as reaching every earlier
# one, and `disqualified` reaches nothing further (a recycled lead climbs again from `lead`).
LEAD_STAGE_RANK: dict[LeadStage, int] = {"lead": 0, "disqualified": 0, "mql": 1, "sql": 2}

OpenDealStage = Literal["qualification", "proposal", "negotiation"]
# A rejected deal is a handoff sales returned to marketing: closed, but neither won nor lost.
ClosedDealStage = Literal["won", "lost", "rejected"]
DealStage = Literal[OpenDealStage, ClosedDealStage]
OPEN_DEAL_STAGES: tuple[OpenDealStage, ...] = get_args(OpenDealStage)
CLOSED_DEAL_STAGES: tuple[ClosedDealStage, ...] = get_args(ClosedDealStage)
DEAL_STAGES: tuple[str, ...] = OPEN_DEAL_STAGES + CLOSED_DEAL_STAGES

# --- the handoff ----------------------------------------------------------------------


def handoff_due_at(created_at: datetime, sla_accept: timedelta) -> datetime:
    """When sales' answer to a handoff (a deal opened by a lead reaching SQL) is due:
    EMBUDO_SLA_ACCEPT_HOURS after the deal's creation."""
    return created_at + sla_accept


def within_handoff_sla(created_at: datetime, answered_at: datetime, sla_accept: timedelta) -> bool:
    """A handoff meets the SLA when it is accepted or rejected at most `sla_accept` after the
    deal's creation (an answer exactly at the due moment is on time)."""
    return answered_at <= handoff_due_at(created_at, sla_accept)


# --- money ----------------------------------------------------------------------------

RevenueKind = Literal["purchase", "renewal", "upsell"]


def currency_pattern(expected: str) -> str:
    """The JSON-schema pattern of `check_currency`: the configured code in any letter case."""
    return "^" + "".join(f"[{c.upper()}{c.lower()}]" for c in expected) + "$"


def check_currency(currency: str | None, expected: str) -> str:
    """Embudo counts money in one currency (EMBUDO_CURRENCY) and never converts: a given
    currency must be that ISO 4217 code (any letter case); absent means that one."""
    if currency is None:
        return expected
    if currency.upper() != expected.upper():
        raise InvalidField("currency", f"currency must be {expected} (EMBUDO_CURRENCY); {currency!r} is not accepted")
    return expected


# --- time -----------------------------------------------------------------------------

# A client's clock may run a little fast: a moment up to this far ahead of ours is "now"
# (stored as now where history must not lie in the future), beyond it the input is refused.
# The default of EMBUDO_CLOCK_SKEW_SECONDS, which every service reads.
CLOCK_SKEW = timedelta(minutes=5)
# Earlier times come from unset clocks, zero timestamps or typos ("0202-03-01"); accepted,
# they would skew cohorts and sales-cycle lengths for good (events are never rewritten).
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)

# --- attribution ----------------------------------------------------------------------


def utm_value(value: str | None) -> str | None:
    """A UTM parameter as attribution reads it (campaign = utm_campaign, channel = utm_medium):
    trimmed, and a blank one is absent (unattributed), never a campaign named ''."""
    if value is None:
        return None
    return value.strip() or None
