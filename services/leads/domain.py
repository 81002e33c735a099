"""Lead rules: identity facts, attribution, scoring and the stage lifecycle. No I/O.

Everything derived from submissions (created_at, profile, score, first and last touch) is
recomputed from the full set of a lead's submissions, in occurred_at order, so the
result does not depend on the order in which Kafka delivered them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from shared.events import Attribution, FormSubmission, LeadStage, Touch

# --- submissions, profile, attribution -------------------------------------------------

PROFILE_COLUMNS = ("name", "company", "phone")


def _clean(value: str | None) -> str | None:
    """Blank answers count as not given: they never erase what a lead told us before."""
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(frozen=True)
class Submission:
    """One form submission as a lead keeps it: where it came from and what it said."""

    event_id: uuid.UUID
    touch: Touch
    name: str | None = None
    company: str | None = None
    phone: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def occurred_at(self) -> datetime:
        return self.touch.occurred_at


def submission_from(event_id: uuid.UUID, form: FormSubmission, occurred_at: datetime) -> Submission:
    utm = form.utm
    touch = Touch(
        campaign_id=_clean(utm.campaign),
        channel=_clean(utm.medium),
        source=_clean(utm.source),
        term=_clean(utm.term),
        content=_clean(utm.content),
        form_id=form.form_id,
        page_url=form.page_url,
        occurred_at=occurred_at,
    )
    fields = {key: cleaned for key, value in form.fields.items() if (cleaned := _clean(value))}
    return Submission(
        event_id=event_id,
        touch=touch,
        name=_clean(form.name),
        company=_clean(form.company),
        phone=_clean(form.phone),
        fields=fields,
    )


def chronological(submissions: list[Submission]) -> list[Submission]:
    # event_id breaks ties between equal timestamps the same way whatever the arrival order.
    return sorted(submissions, key=lambda s: (s.occurred_at, str(s.event_id)))


@dataclass(frozen=True)
class Profile:
    name: str | None = None
    company: str | None = None
    phone: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def filled(self) -> set[str]:
        """Names of the answered profile items: name/company/phone and custom field keys."""
        return {c for c in PROFILE_COLUMNS if getattr(self, c)} | set(self.fields)


def build_profile(submissions: list[Submission]) -> Profile:
    """The newest non-blank answer wins, item by item (custom fields key by key)."""
    values: dict[str, str | None] = dict.fromkeys(PROFILE_COLUMNS)
    fields: dict[str, str] = {}
    for sub in chronological(submissions):
        for column in PROFILE_COLUMNS:
            values[column] = getattr(sub, column) or values[column]
        fields.update(sub.fields)
    return Profile(**values, fields=fields)


def attribution(submissions: list[Submission]) -> Attribution:
    ordered = chronological(submissions)
    return Attribution(first_touch=ordered[0].touch, last_touch=ordered[-1].touch)


# --- scoring ---------------------------------------------------------------------------


class FormPoints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: dict[str, int] = Field(default_factory=dict)  # by form_id
    other: int = 0  # any form not listed


class RepeatTouchPoints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    each: int = Field(default=0, ge=0)
    max: int = Field(default=0, ge=0)


class ScoringRules(BaseModel):
    """The scoring config file (services/leads/scoring.yaml), validated."""

    model_config = ConfigDict(extra="forbid")
    forms: FormPoints = Field(default_factory=FormPoints)
    # Completeness: points per answered item: name, company, phone or a custom field key.
    profile: dict[str, int] = Field(default_factory=dict)
    repeat_touches: RepeatTouchPoints = Field(default_factory=RepeatTouchPoints)


def score(submissions: list[Submission], rules: ScoringRules) -> int:
    """Points for each distinct form submitted, for each answered profile item, and for
    every touch after the first (capped)."""
    forms = {s.touch.form_id for s in submissions if s.touch.form_id}
    form_points = sum(rules.forms.points.get(form, rules.forms.other) for form in forms)
    answered = build_profile(submissions).filled()
    profile_points = sum(points for item, points in rules.profile.items() if item in answered)
    repeats = max(len(submissions) - 1, 0)
    repeat_points = min(repeats * rules.repeat_touches.each, rules.repeat_touches.max)
    return form_points + profile_points + repeat_points


@dataclass(frozen=True)
class LeadFacts:
    """What a lead's submissions say about it."""

    created_at: datetime
    profile: Profile
    score: int
    attribution: Attribution
    touch_count: int


def lead_facts(submissions: list[Submission], rules: ScoringRules) -> LeadFacts:
    if not submissions:
        raise ValueError("a lead has at least one submission")
    return LeadFacts(
        created_at=chronological(submissions)[0].occurred_at,
        profile=build_profile(submissions),
        score=score(submissions, rules),
        attribution=attribution(submissions),
        touch_count=len(submissions),
    )


# --- lifecycle -------------------------------------------------------------------------

STAGES: tuple[LeadStage, ...] = ("lead", "mql", "sql", "disqualified")
# Forward moves may skip a stage; disqualified only before sql; recycling only back to lead.
ALLOWED_MOVES: frozenset[tuple[str, str]] = frozenset(
    {
        ("lead", "mql"),
        ("lead", "sql"),
        ("mql", "sql"),
        ("lead", "disqualified"),
        ("mql", "disqualified"),
        ("disqualified", "lead"),
    }
)
THRESHOLD_REASON = "score threshold"


class MoveRefused(Exception):
    """The lifecycle does not allow this stage change (HTTP 409)."""


class InvalidStageTime(ValueError):
    """A stage change's occurred_at cannot be right (HTTP 422)."""


def check_move(current: str, target: str) -> None:
    if current == target:
        raise MoveRefused(f"the lead is already in stage '{current}'")
    if (current, target) not in ALLOWED_MOVES:
        allowed = sorted(to for frm, to in ALLOWED_MOVES if frm == current)
        raise MoveRefused(
            f"a lead cannot move from '{current}' to '{target}'"
            f" (from '{current}' it may go to: {', '.join(allowed) or 'nowhere'})"
        )


def check_stage_time(
    occurred_at: datetime,
    *,
    created_at: datetime,
    last_change_at: datetime | None,
    now: datetime,
    clock_skew: timedelta,
) -> None:
    if occurred_at > now + clock_skew:
        raise InvalidStageTime("occurred_at lies in the future")
    if occurred_at < created_at:
        raise InvalidStageTime(f"occurred_at is earlier than the lead's created_at ({created_at.isoformat()})")
    # The history must read in order, or time-in-stage would come out negative.
    if last_change_at is not None and occurred_at < last_change_at:
        raise InvalidStageTime(
            f"occurred_at is earlier than the lead's last stage change ({last_change_at.isoformat()})"
        )


def promotes_to_mql(score: int, stage: str, threshold: int | None) -> bool:
    """Automatic promotion is off unless a threshold is configured."""
    return threshold is not None and stage == "lead" and score >= threshold
