"""The leads use cases: a form submission becomes or touches a lead and links its visitor to
it, a visit touches the leads of its visitor, a lead moves through its lifecycle, and the
reads of the API. Each command runs in one unit of work and queues the lead events it causes
in the outbox of that same transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from weakref import WeakKeyDictionary

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
from shared.topics import LEAD_EVENTS, Topic
from shared.uow import UnitOfWork, unit_of_work

from . import store
from .domain import (
    THRESHOLD_REASON,
    LeadSummary,
    ScoredLead,
    ScoringRules,
    Submission,
    Visit,
    check_move,
    check_stage_time,
    handoff_rejected_reason,
    newest_visitors,
    promotes_to_mql,
    returns_handoff,
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
CREATION_REASON = "first form submission"


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


@dataclass(frozen=True)
class _Queued:
    """A form submission noted in a transaction, applied with the others just before it commits."""

    email: str
    submission: Submission
    visitor: str | None
    rules: ScoringRules
    threshold: int | None


_queues: WeakKeyDictionary[UnitOfWork, list[_Queued]] = WeakKeyDictionary()


async def queue_submission(
    uow: UnitOfWork, event: Envelope[FormSubmission], rules: ScoringRules, mql_threshold: int | None
) -> None:
    """Note a form submission; the transaction's submissions are applied together just before
    it commits (record_submission's effects and events, a handful of statements per batch)."""
    form = event.data
    email = normalise_email(form.email)
    if not email:
        raise ValueError("form submission without an email")  # fails its batch; alone, retried then dead-lettered
    submission = submission_from(event.event_id, form, event.occurred_at)
    queued = _Queued(email, submission, visitor_id(form.anonymous_id), rules, mql_threshold)
    queue = _queues.get(uow)
    if queue is None:
        queue = _queues[uow] = []
        uow.before_commit(lambda: _apply_queued(uow))
    queue.append(queued)


async def record_submission(
    uow: UnitOfWork, event: Envelope[FormSubmission], rules: ScoringRules, mql_threshold: int | None
) -> uuid.UUID:
    """Create or touch the lead of a form submission, link its visitor to the lead (the
    visitor's earlier visits become touches of the lead), now; returns the lead's id."""
    await queue_submission(uow, event, rules, mql_threshold)
    return (await _apply_queued(uow))[event.event_id]


async def _apply_queued(uow: UnitOfWork) -> dict[uuid.UUID, uuid.UUID]:
    """Apply the submissions queued in `uow`, in the order they were queued; returns each
    one's lead (event_id -> lead_id)."""
    queued = _queues.pop(uow, None)
    return await _apply_submissions(uow, queued) if queued else {}


async def _apply_submissions(uow: UnitOfWork, queued: list[_Queued]) -> dict[uuid.UUID, uuid.UUID]:
    """What record_submission does for each submission in turn, with each statement written
    once for all of them: the same rows, and the same events in the same order, as applying
    them one by one. Each lead's summary is read once and every submission merged into it."""
    conn = uow.conn
    visitors = {q.visitor for q in queued if q.visitor is not None}
    if visitors:
        await store.lock_visitors(conn, visitors)  # always the visitors first, then the leads
    leads = await _lock_or_create_leads(conn, queued)
    lead_of = {q.submission.event_id: leads[q.email][0]["lead_id"] for q in queued}
    await store.add_touches(conn, [(lead_of[q.submission.event_id], q.submission) for q in queued])

    # The visitors each lead's events list, and the links this batch makes (which adopt visits).
    existing = {row["lead_id"] for row, created in leads.values() if not created}
    pairs = {(q.visitor, lead_of[q.submission.event_id]) for q in queued if q.visitor is not None}
    seen: dict[uuid.UUID, dict[str, datetime]] = {row["lead_id"]: {} for row, _ in leads.values()}
    if existing:
        stored_pairs = sorted(p for p in pairs if p[1] in existing)
        for row in await store.visitor_links(conn, sorted(existing), stored_pairs, ANONYMOUS_IDS_SHOWN):
            seen[row["lead_id"]][row["anonymous_id"]] = row["last_seen_at"]
    new_links = sorted((visitor, lead_id) for visitor, lead_id in pairs if visitor not in seen[lead_id])
    adopted: dict[tuple[str, uuid.UUID], list[Visit]] = {link: [] for link in new_links}
    if new_links:
        for lead_id, visit in await store.adopt_visits(conn, new_links):
            adopted[(visit.anonymous_id, lead_id)].append(visit)

    # Each submission in turn: the lead's summary, facts and events as of that submission.
    summaries: dict[uuid.UUID, LeadSummary] = {}
    facts_of: dict[uuid.UUID, ScoredLead] = {}
    stage_of = {row["lead_id"]: row["stage"] for row, _ in leads.values()}
    last_change = await _last_stage_changes(conn, queued, leads)
    shown: dict[uuid.UUID, list[str]] = {}  # newest_visitors(seen[lead]), kept until they change
    events: list[tuple[Topic, Envelope]] = []
    promotions: list[tuple[uuid.UUID, str, str, str | None, datetime]] = []
    links: dict[tuple[str, uuid.UUID], datetime] = {}
    for q in queued:
        sub = q.submission
        row, created = leads[q.email]
        lead_id = row["lead_id"]
        first_of_lead = lead_id not in summaries
        if first_of_lead:
            summary = LeadSummary.of(sub) if created else LeadSummary.model_validate_json(row["summary_json"]).add(sub)
        else:
            summary = summaries[lead_id].add(sub)
        if q.visitor is not None:
            link = (q.visitor, lead_id)
            if link not in links and link in adopted:  # linked by this submission
                for visit in adopted[link]:
                    summary = summary.add(visit)
            links[link] = max(links.get(link, sub.occurred_at), sub.occurred_at)
            known = seen[lead_id].get(q.visitor)
            if known is None or known < sub.occurred_at:
                seen[lead_id][q.visitor] = sub.occurred_at
                shown.pop(lead_id, None)
        if lead_id not in shown:
            shown[lead_id] = newest_visitors(seen[lead_id], ANONYMOUS_IDS_SHOWN)
        summaries[lead_id] = summary
        facts = facts_of[lead_id] = scored(summary, q.rules)
        touch_event = _touch_event(
            lead_id, q.email, facts, sub, anonymous_ids=shown[lead_id], created=created and first_of_lead
        )
        events.append((LEAD_EVENTS, touch_event))
        if promotes_to_mql(facts.score, stage_of[lead_id], q.threshold):
            # A late (older) touch must not put the promotion before the last stage change.
            when = max(sub.occurred_at, last_change.get(lead_id, sub.occurred_at))
            promotions.append((lead_id, stage_of[lead_id], "mql", THRESHOLD_REASON, when))
            changed = LeadStageChanged(
                lead_id=lead_id,
                from_stage=stage_of[lead_id],
                to_stage="mql",
                reason=THRESHOLD_REASON,
                occurred_at=when,
                created_at=facts.created_at,
                attribution=facts.attribution,
            )
            events.append((LEAD_EVENTS, lead_event(changed, lead_id, when)))
            stage_of[lead_id] = "mql"
            last_change[lead_id] = when

    if links:
        await store.link_visitors(conn, [(visitor, lead_id, at) for (visitor, lead_id), at in sorted(links.items())])
    await store.save_facts_many(conn, [(lead_id, facts, stage_of[lead_id]) for lead_id, facts in facts_of.items()])
    if promotions:
        await store.add_stage_changes(conn, promotions)
    await uow.publish_many(events)
    return lead_of


async def _lock_or_create_leads(
    conn: asyncpg.Connection, queued: list[_Queued]
) -> dict[str, tuple[asyncpg.Record, bool]]:
    """Every submission's lead by email, row-locked: (row, created by this transaction).
    Row-locked either way: one lead's submissions take turns across transactions."""
    emails = sorted({q.email for q in queued})
    leads = {row["email"]: (row, False) for row in await store.lock_leads_by_email(conn, emails)}
    missing = [email for email in emails if email not in leads]
    if missing:
        firsts = {}
        for q in queued:
            firsts.setdefault(q.email, q.submission)
        for row in await store.insert_leads(conn, [(email, firsts[email]) for email in missing], CREATION_REASON):
            leads[row["email"]] = (row, True)
        if lost := [email for email in missing if email not in leads]:  # a concurrent submission created them
            leads.update({row["email"]: (row, False) for row in await store.lock_leads_by_email(conn, lost)})
    return leads


async def _last_stage_changes(
    conn: asyncpg.Connection, queued: list[_Queued], leads: dict[str, tuple[asyncpg.Record, bool]]
) -> dict[uuid.UUID, datetime]:
    """The last stage change of each lead this batch may promote. Its creation row is left
    out: that follows created_at, which is never after the submission that promotes it."""
    thresholds = {q.email for q in queued if q.threshold is not None}
    candidates = [row["lead_id"] for email, (row, created) in leads.items()
                  if email in thresholds and not created and row["stage"] == "lead"]  # fmt: skip
    return await store.last_stage_changes(conn, candidates) if candidates else {}


async def record_page_view(
    uow: UnitOfWork, event: Envelope[PageView], rules: ScoringRules, mql_threshold: int | None
) -> list[uuid.UUID]:
    """A page view carrying UTM is kept as a visit and touches every lead its visitor is
    linked to; returns those leads. One without UTM is no touch: nothing is written."""
    visit = visit_from(event.event_id, event.data, event.occurred_at)
    if visit is None:
        return []
    await _apply_queued(uow)  # submissions handled before it in this transaction come first
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


def _touch_event(
    lead_id: uuid.UUID,
    email: str,
    facts: ScoredLead,
    touch: Submission | Visit,
    *,
    anonymous_ids: list[str],
    created: bool,
) -> Envelope:
    """lead.created (the lead's first submission) or lead.touched, as of `touch`."""
    if created:
        data: EventData = LeadCreated(
            lead_id=lead_id,
            email=email,
            stage="lead",
            score=facts.score,
            created_at=facts.created_at,
            attribution=facts.attribution,
            anonymous_ids=anonymous_ids,
        )
    else:
        data = LeadTouched(
            lead_id=lead_id,
            email=email,
            touch=touch.touch,
            score=facts.score,
            created_at=facts.created_at,
            attribution=facts.attribution,
            anonymous_ids=anonymous_ids,
        )
    return lead_event(data, lead_id, touch.occurred_at)


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
    data = _touch_event(lead_id, lead["email"], facts, touch, anonymous_ids=anonymous_ids, created=created)
    await uow.publish(LEAD_EVENTS, data)

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


async def return_handoff(uow: UnitOfWork, lead_id: uuid.UUID, reason: str, rejected_at: datetime) -> None:
    """Sales rejected the lead's handoff (deal.rejected): the lead goes back to mql, the
    reason in its history, for marketing to nurture and hand over again."""
    lead = await store.lock_lead(uow.conn, lead_id)
    if lead is None:  # sales only knows leads that leads created; nothing to return
        return
    last_change = await store.last_stage_change_at(uow.conn, lead_id)
    if returns_handoff(lead["stage"], last_change, rejected_at):
        await change_stage(uow, lead, "mql", handoff_rejected_reason(reason), rejected_at)


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
