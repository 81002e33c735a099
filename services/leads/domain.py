"""Lead rules: identity facts, attribution, scoring and the stage lifecycle. No I/O.

A lead's touches are its form submissions and the visits (page views carrying UTM) of the
visitors linked to it. Everything derived from them (created_at, profile, score, first and
last touch) comes from a LeadSummary: a merge of the lead's touches in which every part is
an earliest, a newest, a union or a count. So the result does not depend on the order in
which Kafka delivered them, and a new touch costs the same however many came before.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from shared.errors import Conflict, InvalidField, OutOfOrder
from shared.events import Attribution, FormSubmission, PageView, Touch, UtcDatetime, Utm
from shared.rules import LeadStage

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


@dataclass(frozen=True)
class Visit:
    """A page view that carried UTM parameters: a touch of every lead its visitor is linked to."""

    event_id: uuid.UUID
    anonymous_id: str
    touch: Touch

    @property
    def occurred_at(self) -> datetime:
        return self.touch.occurred_at


def _utm(utm: Utm) -> dict[str, str | None]:
    return {
        "campaign_id": _clean(utm.campaign),
        "channel": _clean(utm.medium),
        "source": _clean(utm.source),
        "term": _clean(utm.term),
        "content": _clean(utm.content),
    }


def visitor_id(anonymous_id: str | None) -> str | None:
    """The visitor a submission or page view names, if any. Ids are opaque: used as sent,
    except that a blank one names nobody."""
    return anonymous_id if anonymous_id and anonymous_id.strip() else None


def submission_from(event_id: uuid.UUID, form: FormSubmission, occurred_at: datetime) -> Submission:
    touch = Touch(
        kind="form_submission", **_utm(form.utm), form_id=form.form_id, page_url=form.page_url, occurred_at=occurred_at
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


def visit_from(event_id: uuid.UUID, view: PageView, occurred_at: datetime) -> Visit | None:
    """The touch a page view is, or None when it carries no UTM value (blank ones count as
    absent, as in submissions): a plain page view is no marketing contact."""
    utm = _utm(view.utm)
    anonymous_id = visitor_id(view.anonymous_id)
    if anonymous_id is None or not any(utm.values()):
        return None
    touch = Touch(kind="page_view", **utm, page_url=view.url, occurred_at=occurred_at)
    return Visit(event_id=event_id, anonymous_id=anonymous_id, touch=touch)


def newest_visitors(last_seen: Mapping[str, datetime], limit: int) -> list[str]:
    """The `limit` most recently seen of a lead's visitors ({anonymous_id: last_seen_at}),
    sorted by id; equal times are broken by the larger id, as store.anonymous_ids does."""
    newest = heapq.nlargest(limit, last_seen.items(), key=lambda item: (item[1], item[0]))
    return sorted(anonymous_id for anonymous_id, _ in newest)


def recency(occurred_at: datetime, event_id: uuid.UUID) -> tuple[datetime, str]:
    # event_id breaks ties between equal timestamps the same way whatever the arrival order.
    return (occurred_at, str(event_id))


@dataclass(frozen=True)
class Profile:
    name: str | None = None
    company: str | None = None
    phone: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def filled(self) -> set[str]:
        """Names of the answered profile items: name/company/phone and custom field keys."""
        return {c for c in PROFILE_COLUMNS if getattr(self, c)} | set(self.fields)


class Answer(BaseModel):
    """A profile answer and the submission it came from (newer answers win)."""

    model_config = ConfigDict(frozen=True)
    value: str
    occurred_at: UtcDatetime
    event_id: uuid.UUID

    def newer_than(self, other: Answer) -> bool:
        return recency(self.occurred_at, self.event_id) > recency(other.occurred_at, other.event_id)


# Custom form fields a lead keeps: the most recently answered keys. Each submission carries
# at most 50, but a form (or a bot) sending new keys every time must not grow a lead forever.
MAX_CUSTOM_FIELDS = 100


def _newest(ours: dict[str, Answer], theirs: dict[str, Answer], keep: int | None = None) -> dict[str, Answer]:
    """Per item, the newer answer; then, with `keep`, only the `keep` most recent items.
    Keeping the top `keep` is still order-independent: an item dropped from one side had
    `keep` newer items there, so it cannot be among the `keep` newest of the union."""
    merged = dict(ours)
    for item, answer in theirs.items():
        if item not in merged or answer.newer_than(merged[item]):
            merged[item] = answer
    if keep is not None and len(merged) > keep:
        newest = sorted(merged.items(), key=lambda kv: (recency(kv[1].occurred_at, kv[1].event_id), kv[0]))[-keep:]
        merged = dict(newest)
    return merged


class LeadSummary(BaseModel):
    """What a lead's touches add up to, stored with the lead (leads.summary).

    merge() is commutative and associative (earliest / newest by recency, set union,
    sum), so any arrival order of the same touches gives the same summary."""

    model_config = ConfigDict(frozen=True)
    first_touch: Touch  # of any kind
    first_event_id: uuid.UUID
    last_touch: Touch
    last_event_id: uuid.UUID
    # The earliest submission's occurred_at: the lead's created_at (a form creates a lead; a
    # visit before it only moves the first touch). None in a summary of visits alone.
    first_submitted_at: UtcDatetime | None
    answers: dict[str, Answer] = Field(default_factory=dict)  # name, company, phone: newest non-blank
    fields: dict[str, Answer] = Field(default_factory=dict)  # custom form fields, key by key
    forms: frozenset[str] = frozenset()  # distinct form_ids submitted
    touch_count: NonNegativeInt = 1  # touches of every kind

    @model_validator(mode="before")
    @classmethod
    def _stored_before_visits(cls, data: Any) -> Any:
        # Summaries stored before visits were touches lack first_submitted_at: every touch
        # then was a submission, so the first touch is the earliest one.
        if isinstance(data, dict) and "first_submitted_at" not in data and "first_touch" in data:
            first = data["first_touch"]
            earliest = first["occurred_at"] if isinstance(first, dict) else first.occurred_at
            data = {**data, "first_submitted_at": earliest}
        return data

    @classmethod
    def of(cls, touch: Submission | Visit) -> LeadSummary:
        if isinstance(touch, Visit):
            return cls(
                first_touch=touch.touch,
                first_event_id=touch.event_id,
                last_touch=touch.touch,
                last_event_id=touch.event_id,
                first_submitted_at=None,
            )
        sub = touch

        def answer(value: str) -> Answer:
            return Answer(value=value, occurred_at=sub.occurred_at, event_id=sub.event_id)

        return cls(
            first_touch=sub.touch,
            first_event_id=sub.event_id,
            last_touch=sub.touch,
            last_event_id=sub.event_id,
            first_submitted_at=sub.occurred_at,
            answers={c: answer(v) for c in PROFILE_COLUMNS if (v := getattr(sub, c))},
            fields=_newest({}, {key: answer(value) for key, value in sub.fields.items()}, keep=MAX_CUSTOM_FIELDS),
            forms=frozenset({sub.touch.form_id} if sub.touch.form_id else ()),
        )

    def merge(self, other: LeadSummary) -> LeadSummary:
        ours_first = recency(self.first_touch.occurred_at, self.first_event_id)
        ours_last = recency(self.last_touch.occurred_at, self.last_event_id)
        first = self if ours_first <= recency(other.first_touch.occurred_at, other.first_event_id) else other
        last = self if ours_last >= recency(other.last_touch.occurred_at, other.last_event_id) else other
        submitted = [t for t in (self.first_submitted_at, other.first_submitted_at) if t is not None]
        return LeadSummary(
            first_touch=first.first_touch,
            first_event_id=first.first_event_id,
            last_touch=last.last_touch,
            last_event_id=last.last_event_id,
            first_submitted_at=min(submitted, default=None),
            answers=_newest(self.answers, other.answers),
            fields=_newest(self.fields, other.fields, keep=MAX_CUSTOM_FIELDS),
            forms=self.forms | other.forms,
            touch_count=self.touch_count + other.touch_count,
        )

    def add(self, touch: Submission | Visit) -> LeadSummary:
        return self.merge(LeadSummary.of(touch))

    @property
    def profile(self) -> Profile:
        return Profile(
            **{c: a.value for c, a in self.answers.items()},
            fields={key: a.value for key, a in sorted(self.fields.items())},
        )

    @property
    def attribution(self) -> Attribution:
        return Attribution(first_touch=self.first_touch, last_touch=self.last_touch)


def summarise(touches: list[Submission | Visit]) -> LeadSummary:
    if not touches:
        raise ValueError("a lead has at least one touch")
    summaries = [LeadSummary.of(touch) for touch in touches]
    summary = summaries[0]
    for other in summaries[1:]:
        summary = summary.merge(other)
    return summary


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


def score(summary: LeadSummary, rules: ScoringRules) -> int:
    """Points for each distinct form submitted, for each answered profile item, and for
    every touch after the first, of any kind (capped)."""
    form_points = sum(rules.forms.points.get(form, rules.forms.other) for form in summary.forms)
    answered = summary.profile.filled()
    profile_points = sum(points for item, points in rules.profile.items() if item in answered)
    repeats = max(summary.touch_count - 1, 0)
    repeat_points = min(repeats * rules.repeat_touches.each, rules.repeat_touches.max)
    return form_points + profile_points + repeat_points


@dataclass(frozen=True)
class ScoredLead:
    """What a lead's touches say about it, under the current scoring rules."""

    summary: LeadSummary
    score: int

    @property
    def created_at(self) -> datetime:
        if self.summary.first_submitted_at is None:
            raise ValueError("a lead has at least one submission")
        return self.summary.first_submitted_at

    @property
    def profile(self) -> Profile:
        return self.summary.profile

    @property
    def attribution(self) -> Attribution:
        return self.summary.attribution

    @property
    def touch_count(self) -> int:
        return self.summary.touch_count


def scored(summary: LeadSummary, rules: ScoringRules) -> ScoredLead:
    return ScoredLead(summary=summary, score=score(summary, rules))


# --- lifecycle -------------------------------------------------------------------------

# Forward moves may skip a stage; disqualified only before sql; recycling only back to lead.
# sql -> mql is not among them: only sales rejecting the handoff returns a lead (returns_handoff).
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


class MoveRefused(Conflict):
    """The lifecycle does not allow this stage change."""

    title = "Stage change not allowed"

    def __init__(self, detail: str, *, stage: str) -> None:
        super().__init__(detail, stage=stage)


class InvalidStageTime(InvalidField):
    """A stage change's occurred_at cannot be right."""

    def __init__(self, message: str) -> None:
        super().__init__("occurred_at", message)


def check_move(current: LeadStage, target: LeadStage) -> None:
    if current == target:
        raise MoveRefused(f"the lead is already in stage '{current}'", stage=current)
    if (current, target) not in ALLOWED_MOVES:
        allowed = sorted(to for frm, to in ALLOWED_MOVES if frm == current)
        raise MoveRefused(
            f"a lead cannot move from '{current}' to '{target}'"
            f" (from '{current}' it may go to: {', '.join(allowed) or 'nowhere'})",
            stage=current,
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
        raise OutOfOrder("occurred_at", f"occurred_at is earlier than the lead's created_at ({created_at.isoformat()})")
    # The history must read in order, or time-in-stage would come out negative.
    if last_change_at is not None and occurred_at < last_change_at:
        raise OutOfOrder(
            "occurred_at", f"occurred_at is earlier than the lead's last stage change ({last_change_at.isoformat()})"
        )


def handoff_rejected_reason(reason: str) -> str:
    """The reason a lead's history gives for its return to mql."""
    return f"handoff rejected: {reason}"


def returns_handoff(stage: str, last_change_at: datetime | None, rejected_at: datetime) -> bool:
    """Sales rejecting a lead's handoff returns the lead to mql, if the lead is still in sql
    from that handoff: not when it has moved since (a copy of the rejection, or one that
    arrives after marketing handed the lead over again, whose sql is later than it)."""
    return stage == "sql" and (last_change_at is None or last_change_at <= rejected_at)


def promotes_to_mql(score: int, stage: str, threshold: int | None) -> bool:
    """Automatic promotion is off unless a threshold is configured."""
    return threshold is not None and stage == "lead" and score >= threshold
