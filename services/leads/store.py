"""The leads service's SQL. Plain functions over an asyncpg connection."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from shared.events import Touch

from .domain import ScoredLead, Submission, Visit

TOUCH_COLUMNS = "kind, occurred_at, form_id, campaign_id, channel, source, term, content, page_url"
# What a visit stores: a touch of its visitor's leads, whichever they are and whenever linked.
VISIT_COLUMNS = "occurred_at, campaign_id, channel, source, term, content, page_url"
# Advisory-lock namespace of visitors (the two-int4 key space, apart from the migrations' lock).
_VISITOR_LOCK = 0x76697369  # "visi"


# What a batch of submissions needs of a lead it locks; the summary as JSON text, which
# pydantic parses faster than the json codec's dict.
_LOCKED = "lead_id, email, stage, summary::text AS summary_json"


async def lock_leads_by_email(conn: asyncpg.Connection, emails: Sequence[str]) -> list[asyncpg.Record]:
    """(lead_id, email, stage, summary_json) of the leads of `emails` that exist, row-locked
    in email order: two transactions locking some of the same leads wait for each other
    instead of deadlocking."""
    return await conn.fetch(
        f"SELECT {_LOCKED} FROM leads WHERE email = ANY($1::text[]) ORDER BY email FOR UPDATE", list(emails)
    )


async def insert_leads(
    conn: asyncpg.Connection, firsts: Sequence[tuple[str, Submission]], reason: str
) -> list[asyncpg.Record]:
    """Create a lead per (email, a first submission) with its creation row in the stage
    history; returns the leads created (each insert holds its row lock). An email a
    concurrent first submission created first is left out: ON CONFLICT makes the two one lead.
    Rows as lock_leads_by_email's."""
    return await conn.fetch(
        f"""WITH lead AS (
               INSERT INTO leads (lead_id, email, created_at, first_touch, last_touch)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::jsonb[], $4::jsonb[])
               ORDER BY 2
               ON CONFLICT (email) DO NOTHING
               RETURNING *
           ), creation AS (
               INSERT INTO stage_history (lead_id, from_stage, to_stage, reason, occurred_at)
               SELECT lead_id, NULL, stage, $5, created_at FROM lead
           )
           SELECT {_LOCKED} FROM lead""",
        [uuid.uuid4() for _ in firsts],
        [email for email, _ in firsts],
        [first.occurred_at for _, first in firsts],
        [first.touch.model_dump(mode="json") for _, first in firsts],
        reason,
    )


async def lock_lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> asyncpg.Record | None:
    """The lead, row-locked until the transaction ends: touches and stage changes of one
    lead take turns, so their outbox rows are written in the order they happened."""
    return await conn.fetchrow("SELECT * FROM leads WHERE lead_id = $1 FOR UPDATE", lead_id)


async def add_touches(conn: asyncpg.Connection, touches: Sequence[tuple[uuid.UUID, Submission]]) -> None:
    """Keep each (lead_id, submission) as a touch of its lead."""
    subs = [sub for _, sub in touches]
    await conn.execute(
        f"""INSERT INTO touches (lead_id, event_id, {TOUCH_COLUMNS}, name, company, phone, fields)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                                 $13::text[], $14::text[], $15::jsonb[])""",
        [lead_id for lead_id, _ in touches],
        [sub.event_id for sub in subs],
        [sub.touch.kind for sub in subs],
        [sub.touch.occurred_at for sub in subs],
        [sub.touch.form_id for sub in subs],
        [sub.touch.campaign_id for sub in subs],
        [sub.touch.channel for sub in subs],
        [sub.touch.source for sub in subs],
        [sub.touch.term for sub in subs],
        [sub.touch.content for sub in subs],
        [sub.touch.page_url for sub in subs],
        [sub.name for sub in subs],
        [sub.company for sub in subs],
        [sub.phone for sub in subs],
        [sub.fields for sub in subs],
    )


# --- visitors and visits ---------------------------------------------------------------------


async def lock_visitor(conn: asyncpg.Connection, anonymous_id: str) -> None:
    """Until the transaction ends. A page view (stores its visit, then reads the visitor's
    links) and a submission (links the visitor, then reads its visits) take turns, so neither
    misses the other. Taken before any lead's row lock; ids sharing a hash only wait longer."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _VISITOR_LOCK, anonymous_id)


async def lock_visitors(conn: asyncpg.Connection, anonymous_ids: Collection[str]) -> None:
    """lock_visitor for several at once, in the order of their lock keys (fewer deadlocks
    between two transactions sharing visitors)."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock($1, key)
           FROM (SELECT DISTINCT hashtext(a) AS key FROM unnest($2::text[]) AS a ORDER BY key) AS keys""",
        _VISITOR_LOCK,
        list(anonymous_ids),
    )


async def insert_visit(conn: asyncpg.Connection, visit: Visit) -> None:
    t = visit.touch
    await conn.execute(
        f"""INSERT INTO visits (event_id, anonymous_id, {VISIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (event_id) DO NOTHING""",
        visit.event_id,
        visit.anonymous_id,
        t.occurred_at,
        t.campaign_id,
        t.channel,
        t.source,
        t.term,
        t.content,
        t.page_url,
    )


async def linked_leads(conn: asyncpg.Connection, anonymous_id: str) -> list[uuid.UUID]:
    """The leads of a visitor, in lead_id order: the order their rows are locked in."""
    rows = await conn.fetch("SELECT lead_id FROM lead_visitors WHERE anonymous_id = $1 ORDER BY lead_id", anonymous_id)
    return [r["lead_id"] for r in rows]


async def visitor_links(
    conn: asyncpg.Connection, lead_ids: Sequence[uuid.UUID], pairs: Sequence[tuple[str, uuid.UUID]], limit: int
) -> list[asyncpg.Record]:
    """(lead_id, anonymous_id, last_seen_at): each lead's `limit` most recently seen visitors
    (anonymous_ids' order) and, whatever their rank, the links among the (visitor, lead) `pairs`."""
    return await conn.fetch(
        """SELECT l.lead_id, v.anonymous_id, v.last_seen_at
           FROM unnest($1::uuid[]) AS l (lead_id)
           CROSS JOIN LATERAL (
               SELECT anonymous_id, last_seen_at FROM lead_visitors WHERE lead_id = l.lead_id
               ORDER BY last_seen_at DESC, anonymous_id COLLATE "C" DESC LIMIT $2
           ) AS v
           UNION
           SELECT lv.lead_id, lv.anonymous_id, lv.last_seen_at
           FROM unnest($3::text[], $4::uuid[]) AS p (anonymous_id, lead_id)
           JOIN lead_visitors AS lv ON lv.anonymous_id = p.anonymous_id AND lv.lead_id = p.lead_id""",
        list(lead_ids),
        limit,
        [anonymous_id for anonymous_id, _ in pairs],
        [lead_id for _, lead_id in pairs],
    )


async def link_visitors(conn: asyncpg.Connection, links: Sequence[tuple[str, uuid.UUID, datetime]]) -> None:
    """Link each (visitor, lead) or, when linked, move its last_seen_at forward. One row per pair."""
    await conn.execute(
        """INSERT INTO lead_visitors (anonymous_id, lead_id, last_seen_at)
           SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[])
           ON CONFLICT (anonymous_id, lead_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at
           WHERE lead_visitors.last_seen_at < EXCLUDED.last_seen_at""",
        [anonymous_id for anonymous_id, _, _ in links],
        [lead_id for _, lead_id, _ in links],
        [seen_at for _, _, seen_at in links],
    )


async def adopt_visits(
    conn: asyncpg.Connection, links: Sequence[tuple[str, uuid.UUID]]
) -> list[tuple[uuid.UUID, Visit]]:
    """Make the visits of each newly linked (visitor, lead) touches of the lead; returns the
    (lead_id, visit) that were not yet, so a visit adopted twice is counted once."""
    visit_columns = ", ".join(f"v.{column.strip()}" for column in VISIT_COLUMNS.split(","))
    rows = await conn.fetch(
        f"""WITH adopted AS (
                INSERT INTO touches (lead_id, event_id, kind, {VISIT_COLUMNS})
                SELECT p.lead_id, v.event_id, 'page_view', {visit_columns}
                FROM unnest($1::text[], $2::uuid[]) AS p (anonymous_id, lead_id)
                JOIN visits AS v ON v.anonymous_id = p.anonymous_id
                ON CONFLICT (lead_id, event_id) DO NOTHING
                RETURNING lead_id, event_id, {TOUCH_COLUMNS}
            )
            SELECT adopted.*, visits.anonymous_id FROM adopted JOIN visits USING (event_id)""",
        [anonymous_id for anonymous_id, _ in links],
        [lead_id for _, lead_id in links],
    )
    return [
        (r["lead_id"], Visit(event_id=r["event_id"], anonymous_id=r["anonymous_id"], touch=touch_of(r))) for r in rows
    ]


async def add_visit_touches(
    conn: asyncpg.Connection, lead_id: uuid.UUID, anonymous_id: str, event_id: uuid.UUID | None = None
) -> list[Visit]:
    """Make the visitor's visits (or only the one of `event_id`) touches of the lead; returns
    those that were not yet, so a visit adopted twice is counted once."""
    rows = await conn.fetch(
        f"""INSERT INTO touches (lead_id, event_id, kind, {VISIT_COLUMNS})
            SELECT $1, event_id, 'page_view', {VISIT_COLUMNS} FROM visits
            WHERE anonymous_id = $2 AND ($3::uuid IS NULL OR event_id = $3)
            ON CONFLICT (lead_id, event_id) DO NOTHING
            RETURNING event_id, {TOUCH_COLUMNS}""",
        lead_id,
        anonymous_id,
        event_id,
    )
    return [Visit(event_id=r["event_id"], anonymous_id=anonymous_id, touch=touch_of(r)) for r in rows]


async def anonymous_ids(conn: asyncpg.Connection, lead_id: uuid.UUID, limit: int) -> list[str]:
    """The lead's `limit` most recently seen visitors, sorted by id (ties in last_seen_at are
    broken by the id's bytes, as domain.newest_visitors does)."""
    rows = await conn.fetch(
        """SELECT anonymous_id FROM lead_visitors WHERE lead_id = $1
           ORDER BY last_seen_at DESC, anonymous_id COLLATE "C" DESC LIMIT $2""",
        lead_id,
        limit,
    )
    return sorted(r["anonymous_id"] for r in rows)


def touch_of(row: asyncpg.Record) -> Touch:
    return Touch(**{c.strip(): row[c.strip()] for c in TOUCH_COLUMNS.split(",")})


async def touch_page(
    conn: asyncpg.Connection, lead_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """One page of a lead's touches in (occurred_at, event_id) order, after the keyset cursor."""
    if after is None:
        after = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    return await conn.fetch(
        f"""SELECT event_id, {TOUCH_COLUMNS} FROM touches
            WHERE lead_id = $1 AND (occurred_at, event_id) > ($2, $3)
            ORDER BY occurred_at, event_id LIMIT $4""",
        lead_id,
        *after,
        limit,
    )


async def latest_touches(conn: asyncpg.Connection, lead_id: uuid.UUID, limit: int) -> list[Touch]:
    """The lead's `limit` most recent touches, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {TOUCH_COLUMNS} FROM touches WHERE lead_id = $1
            ORDER BY occurred_at DESC, event_id DESC LIMIT $2""",
        lead_id,
        limit,
    )
    return [touch_of(r) for r in reversed(rows)]


async def save_facts(conn: asyncpg.Connection, lead_id: uuid.UUID, facts: ScoredLead) -> asyncpg.Record:
    """Store what the submissions say; the creation row of the history follows created_at."""
    return await conn.fetchrow(
        """WITH lead AS (
               UPDATE leads SET created_at = $2, name = $3, company = $4, phone = $5, fields = $6,
                      score = $7, first_touch = $8, last_touch = $9, touch_count = $10, summary = $11,
                      updated_at = now()
               WHERE lead_id = $1
               RETURNING *
           ), creation AS (
               UPDATE stage_history SET occurred_at = $2
               WHERE lead_id = $1 AND from_stage IS NULL AND occurred_at <> $2
           )
           SELECT * FROM lead""",
        lead_id,
        facts.created_at,
        facts.profile.name,
        facts.profile.company,
        facts.profile.phone,
        facts.profile.fields,
        facts.score,
        facts.attribution.first_touch.model_dump(mode="json"),
        facts.attribution.last_touch.model_dump(mode="json"),
        facts.touch_count,
        facts.summary.model_dump(mode="json"),
    )


async def save_facts_many(conn: asyncpg.Connection, leads: Sequence[tuple[uuid.UUID, ScoredLead, str]]) -> None:
    """save_facts for several (lead_id, facts, stage), in one statement."""
    facts = [f for _, f, _ in leads]
    profiles = [f.profile for f in facts]
    await conn.execute(
        """WITH new AS (
               SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                                    $7::int[], $8::jsonb[], $9::jsonb[], $10::int[], $11::jsonb[], $12::text[])
                   AS n (lead_id, created_at, name, company, phone, fields, score, first_touch, last_touch,
                         touch_count, summary, stage)
           ), lead AS (
               UPDATE leads SET created_at = new.created_at, name = new.name, company = new.company,
                      phone = new.phone, fields = new.fields, score = new.score, first_touch = new.first_touch,
                      last_touch = new.last_touch, touch_count = new.touch_count, summary = new.summary,
                      stage = new.stage, updated_at = now()
               FROM new WHERE leads.lead_id = new.lead_id
           )
           UPDATE stage_history SET occurred_at = new.created_at
           FROM new
           WHERE stage_history.lead_id = new.lead_id AND from_stage IS NULL
             AND stage_history.occurred_at <> new.created_at""",
        [lead_id for lead_id, _, _ in leads],
        [f.created_at for f in facts],
        [p.name for p in profiles],
        [p.company for p in profiles],
        [p.phone for p in profiles],
        [p.fields for p in profiles],
        [f.score for f in facts],
        # Serialised by pydantic: the json codec passes strings through.
        [f.summary.first_touch.model_dump_json() for f in facts],
        [f.summary.last_touch.model_dump_json() for f in facts],
        [f.touch_count for f in facts],
        [f.summary.model_dump_json() for f in facts],
        [stage for _, _, stage in leads],
    )


async def set_stage(
    conn: asyncpg.Connection,
    lead_id: uuid.UUID,
    from_stage: str | None,
    to_stage: str,
    reason: str | None,
    occurred_at: datetime,
) -> asyncpg.Record:
    await conn.execute(
        """INSERT INTO stage_history (lead_id, from_stage, to_stage, reason, occurred_at)
           VALUES ($1, $2, $3, $4, $5)""",
        lead_id,
        from_stage,
        to_stage,
        reason,
        occurred_at,
    )
    return await conn.fetchrow(
        "UPDATE leads SET stage = $2, updated_at = now() WHERE lead_id = $1 RETURNING *", lead_id, to_stage
    )


async def last_stage_change_at(conn: asyncpg.Connection, lead_id: uuid.UUID) -> datetime | None:
    return await conn.fetchval("SELECT max(occurred_at) FROM stage_history WHERE lead_id = $1", lead_id)


async def add_stage_changes(
    conn: asyncpg.Connection, changes: Sequence[tuple[uuid.UUID, str, str, str | None, datetime]]
) -> None:
    """History rows (lead_id, from_stage, to_stage, reason, occurred_at), in the order given;
    the leads' stage columns are the caller's to set."""
    await conn.execute(
        """INSERT INTO stage_history (lead_id, from_stage, to_stage, reason, occurred_at)
           SELECT lead_id, from_stage, to_stage, reason, occurred_at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) WITH ORDINALITY
                AS c (lead_id, from_stage, to_stage, reason, occurred_at, n)
           ORDER BY n""",
        *(list(column) for column in zip(*changes, strict=True)),
    )


async def last_stage_changes(conn: asyncpg.Connection, lead_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """When each lead last changed stage, its creation aside (that one follows created_at)."""
    rows = await conn.fetch(
        """SELECT lead_id, max(occurred_at) AS at FROM stage_history
           WHERE lead_id = ANY($1::uuid[]) AND from_stage IS NOT NULL GROUP BY lead_id""",
        list(lead_ids),
    )
    return {r["lead_id"]: r["at"] for r in rows}


async def stage_history(conn: asyncpg.Connection, lead_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT from_stage, to_stage, reason, occurred_at, recorded_at FROM stage_history
           WHERE lead_id = $1 ORDER BY occurred_at, id""",
        lead_id,
    )


async def get_lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM leads WHERE lead_id = $1", lead_id)


@dataclass(frozen=True)
class LeadFilter:
    stage: str | None = None
    campaign_id: str | None = None
    channel: str | None = None
    touch: str = "any"  # which touch campaign_id/channel match: first, last or any
    email: str | None = None  # normalised
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive


async def list_leads(
    conn: asyncpg.Connection, where: LeadFilter, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """One page in (created_at, lead_id) order, starting after the keyset cursor `after`."""
    conditions: list[str] = []
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (("stage", where.stage), ("email", where.email)):
        if value is not None:
            conditions.append(f"{column} = {arg(value)}")
    for key, value in (("campaign_id", where.campaign_id), ("channel", where.channel)):
        if value is None:
            continue
        placeholder = arg(value)
        first, last = f"first_touch ->> '{key}' = {placeholder}", f"last_touch ->> '{key}' = {placeholder}"
        conditions.append({"first": first, "last": last}.get(where.touch, f"({first} OR {last})"))
    if where.created_from is not None:
        conditions.append(f"created_at >= {arg(where.created_from)}")
    if where.created_to is not None:
        conditions.append(f"created_at < {arg(where.created_to)}")
    if after is not None:
        conditions.append(f"(created_at, lead_id) > ({arg(after[0])}, {arg(after[1])})")
    sql = "SELECT * FROM leads"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY created_at, lead_id LIMIT {arg(limit)}"
    return await conn.fetch(sql, *args)
