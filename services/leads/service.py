"""The leads use cases: a form submission becomes or touches a lead and links its visitor to
it, a visit touches the leads of its visitor, a lead moves through its lifecycle, and the
reads of the API. Each command runs in one unit of work and queues the lead events it causes
in the outbox of that same transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from shared.errors import NotFound
from shared.events import (
    Attribution,
    Envelope,
    EventData,
    FormSubmission,
    LeadCreated,
    LeadStageChanged,
    LeadTouched,
    PageView,
    Touch,
    normalise_email,
    utcnow,
)
from shared.rules import LeadStage
from shared.topics import LEAD_EVENTS
from shared.uow import UnitOfWork, unit_of_work

from . import store
from .domain import (
    THRESHOLD_REASON,
    LeadSummary,
    ScoringRules,
    Submission,
    Visit,
    check_move,
    check_stage_time,
    promotes_to_mql,
    scored,
    submission_from,
    visit_from,
    visitor_id,
)

SOURCE = "leads"
# A lead's detail shows its newest touches only: a form a bot posts to thousands of times
# must not make one lead's page megabytes long (touch_count says how many there are).
TOUCHES_SHOWN = 100
# Lead events and the detail list the lead's most recently seen visitors only: a bot posting
# a new anonymous id with every submission to one email must not grow them without bound.
ANONYMOUS_IDS_SHOWN = 100


def lead_event(data: EventData, lead_id: uuid.UUID, occurred_at: datetime) -> Envelope:
    # Keyed by lead_id: one lead's events stay in order on one partition.
    return Envelope.wrap(data, source=SOURCE, key=str(lead_id), occurred_at=occurred_at)


def lead_attribution(lead: asyncpg.Record) -> Attribution:
    return Attribution(
        first_touch=Touch.model_validate(lead["first_touch"]),
        last_touch=Touch.model_validate(lead["last_touch"]),
    )


# --- commands ----------------------------------------------------------------------------


async def change_stage(
    uow: UnitOfWork, lead: asyncpg.Record, to_stage: LeadStage, reason: str | None, occurred_at: datetime
) -> asyncpg.Record:
    """Move a lead the caller has locked and checked; queue lead.stage_changed. Returns the
    updated lead row."""
    lead_id = lead["lead_id"]
    updated = await store.set_stage(uow.conn, lead_id, lead["stage"], to_stage, reason, occurred_at)
    changed = LeadStageChanged(
        lead_id=lead_id,
        from_stage=lead["stage"],
        to_stage=to_stage,
        reason=reason,
        occurred_at=occurred_at,
        created_at=updated["created_at"],
        attribution=lead_attribution(updated),
    )
    await uow.publish(LEAD_EVENTS, lead_event(changed, lead_id, occurred_at))
    return updated


async def record_submission(
    uow: UnitOfWork, event: Envelope[FormSubmission], rules: ScoringRules, mql_threshold: int | None
) -> uuid.UUID:
    """Create or touch the lead of a form submission, link its visitor to the lead (the
    visitor's earlier visits become touches of the lead); returns the lead's id."""
    form = event.data
    email = normalise_email(form.email)
    if not email:
        raise ValueError("form submission without an email")  # retried, then dead-lettered
    submission = submission_from(event.event_id, form, event.occurred_at)
    visitor = visitor_id(form.anonymous_id)
    conn = uow.conn

    if visitor is not None:
        await store.lock_visitor(conn, visitor)  # always the visitor first, then the lead
    # Row-locked either way: one lead's submissions take turns.
    lead = await store.lock_lead_by_email(conn, email)
    created = None
    if lead is None:
        created = await store.insert_lead(conn, email, submission, "first form submission")
        lead = created or await store.lock_lead_by_email(conn, email)
    lead_id = lead["lead_id"]
    await store.add_touch(conn, lead_id, submission)
    if created is not None:
        summary = LeadSummary.of(submission)
    else:
        summary = LeadSummary.model_validate(lead["summary"]).add(submission)
    if visitor is not None and await store.link_visitor(conn, visitor, lead_id, submission.occurred_at):
        for visit in await store.add_visit_touches(conn, lead_id, visitor):
            summary = summary.add(visit)
    await _touched(uow, lead, summary, submission, created=created is not None, rules=rules, threshold=mql_threshold)
    return lead_id


async def record_page_view(
    uow: UnitOfWork, event: Envelope[PageView], rules: ScoringRules, mql_threshold: int | None
) -> list[uuid.UUID]:
    """A page view carrying UTM is kept as a visit and touches every lead its visitor is
    linked to; returns those leads. One without UTM is no touch: nothing is written."""
    visit = visit_from(event.event_id, event.data, event.occurred_at)
    if visit is None:
        return []
    conn = uow.conn
    await store.lock_visitor(conn, visit.anonymous_id)
    await store.insert_visit(conn, visit)
    touched = []
    for lead_id in await store.linked_leads(conn, visit.anonymous_id):  # locked in lead_id order
        lead = await store.lock_lead(conn, lead_id)  # exists: lead_visitors references it
        if not await store.add_visit_touches(conn, lead_id, visit.anonymous_id, visit.event_id):
            continue
        summary = LeadSummary.model_validate(lead["summary"]).add(visit)
        await _touched(uow, lead, summary, visit, created=False, rules=rules, threshold=mql_threshold)
        touched.append(lead_id)
    return touched


async def _touched(
    uow: UnitOfWork,
    lead: asyncpg.Record,
    summary: LeadSummary,
    touch: Submission | Visit,
    *,
    created: bool,
    rules: ScoringRules,
    threshold: int | None,
) -> None:
    """Store the facts of a locked lead's new summary and queue lead.created or lead.touched
    for `touch` (and lead.stage_changed when the score now promotes it)."""
    conn = uow.conn
    lead_id = lead["lead_id"]
    facts = scored(summary, rules)
    lead = await store.save_facts(conn, lead_id, facts)
    anonymous_ids = await store.anonymous_ids(conn, lead_id, ANONYMOUS_IDS_SHOWN)
    if created:
        data: EventData = LeadCreated(
            lead_id=lead_id,
            email=lead["email"],
            stage="lead",
            score=facts.score,
            created_at=facts.created_at,
            attribution=facts.attribution,
            anonymous_ids=anonymous_ids,
        )
    else:
        data = LeadTouched(
            lead_id=lead_id,
            email=lead["email"],
            touch=touch.touch,
            score=facts.score,
            created_at=facts.created_at,
            attribution=facts.attribution,
            anonymous_ids=anonymous_ids,
        )
    await uow.publish(LEAD_EVENTS, lead_event(data, lead_id, touch.occurred_at))

    if promotes_to_mql(facts.score, lead["stage"], threshold):
        # A late (older) touch must not put the promotion before the last stage change.
        last_change = await store.last_stage_change_at(conn, lead_id)
        when = max(touch.occurred_at, last_change) if last_change else touch.occurred_at
        await change_stage(uow, lead, "mql", THRESHOLD_REASON, when)


async def move_stage(
    pool: asyncpg.Pool,
    lead_id: uuid.UUID,
    to_stage: LeadStage,
    reason: str | None,
    occurred_at: datetime | None,
    *,
    clock_skew: timedelta,
) -> LeadDetail:
    """A stage move asked for through the API (a person or a CRM); `occurred_at` None = now."""
    now = utcnow()
    async with unit_of_work(pool) as uow:
        lead = await store.lock_lead(uow.conn, lead_id)
        if lead is None:
            raise NotFound(f"No lead {lead_id}.")
        check_move(lead["stage"], to_stage)
        last_change = await store.last_stage_change_at(uow.conn, lead_id)
        if occurred_at is None:  # "now", but never before a change recorded a moment ahead of our clock
            occurred_at = max(now, last_change) if last_change else now
        check_stage_time(
            occurred_at, created_at=lead["created_at"], last_change_at=last_change, now=now, clock_skew=clock_skew
        )
        updated = await change_stage(uow, lead, to_stage, reason, occurred_at)
        return await _detail(uow.conn, updated)


# --- queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LeadDetail:
    lead: asyncpg.Record
    touches: list[Touch]  # the TOUCHES_SHOWN most recent, oldest first
    stage_history: list[asyncpg.Record]  # oldest first
    anonymous_ids: list[str]  # the ANONYMOUS_IDS_SHOWN most recently seen, sorted


async def _detail(conn: asyncpg.Connection, lead: asyncpg.Record) -> LeadDetail:
    return LeadDetail(
        lead=lead,
        touches=await store.latest_touches(conn, lead["lead_id"], TOUCHES_SHOWN),
        stage_history=await store.stage_history(conn, lead["lead_id"]),
        anonymous_ids=await store.anonymous_ids(conn, lead["lead_id"], ANONYMOUS_IDS_SHOWN),
    )


async def lead_detail(pool: asyncpg.Pool, lead_id: uuid.UUID) -> LeadDetail:
    async with pool.acquire() as conn:
        lead = await store.get_lead(conn, lead_id)
        if lead is None:
            raise NotFound(f"No lead {lead_id}.")
        return await _detail(conn, lead)


async def list_leads(
    pool: asyncpg.Pool, where: store.LeadFilter, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await store.list_leads(conn, where, after, limit)


async def touch_page(
    pool: asyncpg.Pool, lead_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        if await store.get_lead(conn, lead_id) is None:
            raise NotFound(f"No lead {lead_id}.")
        return await store.touch_page(conn, lead_id, after, limit)
