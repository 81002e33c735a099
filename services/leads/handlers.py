"""Form submissions in, lead events out (through the outbox, in the handler's transaction)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from shared.consumer import Handler
from shared.events import (
    Attribution,
    Envelope,
    EventData,
    FormSubmission,
    LeadCreated,
    LeadStageChanged,
    LeadTouched,
    Touch,
    normalise_email,
)
from shared.topics import LEAD_EVENTS
from shared.uow import UnitOfWork

from . import store
from .domain import (
    THRESHOLD_REASON,
    LeadSummary,
    ScoringRules,
    lead_facts,
    promotes_to_mql,
    submission_from,
    summarise,
)

SOURCE = "leads"


def lead_event(data: EventData, lead_id: uuid.UUID, occurred_at: datetime) -> Envelope:
    # Keyed by lead_id: one lead's events stay in order on one partition.
    return Envelope.wrap(data, source=SOURCE, key=str(lead_id), occurred_at=occurred_at)


def lead_attribution(lead: asyncpg.Record) -> Attribution:
    return Attribution(
        first_touch=Touch.model_validate(lead["first_touch"]),
        last_touch=Touch.model_validate(lead["last_touch"]),
    )


async def change_stage(
    uow: UnitOfWork, lead: asyncpg.Record, to_stage: str, reason: str | None, occurred_at: datetime
) -> asyncpg.Record:
    """Move a lead the caller has locked and checked; queue lead.stage_changed. Returns the
    updated lead row."""
    updated = await store.set_stage(uow.conn, lead["id"], lead["stage"], to_stage, reason, occurred_at)
    changed = LeadStageChanged(
        lead_id=lead["id"],
        from_stage=lead["stage"],
        to_stage=to_stage,
        reason=reason,
        occurred_at=occurred_at,
        created_at=updated["created_at"],
        attribution=lead_attribution(updated),
    )
    await uow.publish(LEAD_EVENTS, lead_event(changed, lead["id"], occurred_at))
    return updated


async def record_submission(
    uow: UnitOfWork, event: Envelope, rules: ScoringRules, mql_threshold: int | None
) -> uuid.UUID:
    """Create or touch the lead of a form submission; returns the lead's id."""
    form: FormSubmission = event.data
    email = normalise_email(form.email)
    if not email:
        raise ValueError("form submission without an email")  # retried, then dead-lettered
    submission = submission_from(event.event_id, form, event.occurred_at)
    conn = uow.conn

    # Row-locked either way: one lead's submissions take turns.
    lead = await store.lock_lead_by_email(conn, email)
    created = None
    if lead is None:
        created = await store.insert_lead(conn, email, submission, "first form submission")
        lead = created or await store.lock_lead_by_email(conn, email)
    lead_id = lead["id"]
    await store.add_touch(conn, lead_id, submission)
    if created is not None:
        summary = LeadSummary.of(submission)
    elif lead["summary"] is not None:
        summary = LeadSummary.model_validate(lead["summary"]).add(submission)
    else:  # a lead from before summaries were stored (migration 002): rebuilt once from its touches
        summary = summarise(await store.lead_submissions(conn, lead_id))
    facts = lead_facts(summary, rules)
    lead = await store.save_facts(conn, lead_id, facts)

    if created is not None:
        data: EventData = LeadCreated(
            lead_id=lead_id,
            email=email,
            stage="lead",
            score=facts.score,
            created_at=facts.created_at,
            attribution=facts.attribution,
        )
    else:
        data = LeadTouched(
            lead_id=lead_id,
            email=email,
            touch=submission.touch,
            score=facts.score,
            created_at=facts.created_at,
            attribution=facts.attribution,
        )
    await uow.publish(LEAD_EVENTS, lead_event(data, lead_id, submission.occurred_at))

    if promotes_to_mql(facts.score, lead["stage"], mql_threshold):
        # A late (older) submission must not put the promotion before the last stage change.
        last_change = await store.last_stage_change_at(conn, lead_id)
        when = max(submission.occurred_at, last_change) if last_change else submission.occurred_at
        await change_stage(uow, lead, "mql", THRESHOLD_REASON, when)
    return lead_id


def build_handlers(rules: ScoringRules, mql_threshold: int | None) -> dict[str, Handler]:
    async def on_form_submission(event: Envelope, uow: UnitOfWork) -> None:
        await record_submission(uow, event, rules, mql_threshold)

    return {FormSubmission.event_type: on_form_submission}
