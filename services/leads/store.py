"""The leads service's SQL. Plain functions over an asyncpg connection."""

from __future__ import annotations

import uuid
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


async def lock_lead_by_email(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM leads WHERE email = $1 FOR UPDATE", email)


async def insert_lead(conn: asyncpg.Connection, email: str, first: Submission, reason: str) -> asyncpg.Record | None:
    """Create the lead for `email` with its creation row in the stage history; returns it
    (the insert holds its row lock), or None when a concurrent first submission of the same
    email created it first: ON CONFLICT makes the two create one lead."""
    touch = first.touch.model_dump(mode="json")
    return await conn.fetchrow(
        """WITH lead AS (
               INSERT INTO leads (lead_id, email, created_at, first_touch, last_touch)
               VALUES ($1, $2, $3, $4, $4)
               ON CONFLICT (email) DO NOTHING
               RETURNING *
           ), creation AS (
               INSERT INTO stage_history (lead_id, from_stage, to_stage, reason, occurred_at)
               SELECT lead_id, NULL, stage, $5, created_at FROM lead
           )
           SELECT * FROM lead""",
        uuid.uuid4(),
        email,
        first.occurred_at,
        touch,
        reason,
    )


async def lock_lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> asyncpg.Record | None:
    """The lead, row-locked until the transaction ends: touches and stage changes of one
    lead take turns, so their outbox rows are written in the order they happened."""
    return await conn.fetchrow("SELECT * FROM leads WHERE lead_id = $1 FOR UPDATE", lead_id)


async def add_touch(conn: asyncpg.Connection, lead_id: uuid.UUID, sub: Submission) -> None:
    t = sub.touch
    await conn.execute(
        f"""INSERT INTO touches (lead_id, event_id, {TOUCH_COLUMNS}, name, company, phone, fields)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
        lead_id,
        sub.event_id,
        t.kind,
        t.occurred_at,
        t.form_id,
        t.campaign_id,
        t.channel,
        t.source,
        t.term,
        t.content,
        t.page_url,
        sub.name,
        sub.company,
        sub.phone,
        sub.fields,
    )


# --- visitors and visits ---------------------------------------------------------------------


async def lock_visitor(conn: asyncpg.Connection, anonymous_id: str) -> None:
    """Until the transaction ends. A page view (stores its visit, then reads the visitor's
    links) and a submission (links the visitor, then reads its visits) take turns, so neither
    misses the other. Taken before any lead's row lock; ids sharing a hash only wait longer."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _VISITOR_LOCK, anonymous_id)


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


async def link_visitor(conn: asyncpg.Connection, anonymous_id: str, lead_id: uuid.UUID, seen_at: datetime) -> bool:
    """Link a visitor to a lead (or note it was seen again); True when the link is new."""
    inserted = await conn.fetchval(
        """INSERT INTO lead_visitors (anonymous_id, lead_id, last_seen_at) VALUES ($1, $2, $3)
           ON CONFLICT (anonymous_id, lead_id) DO NOTHING
           RETURNING true""",
        anonymous_id,
        lead_id,
        seen_at,
    )
    if inserted:
        return True
    await conn.execute(
        """UPDATE lead_visitors SET last_seen_at = $3
           WHERE anonymous_id = $1 AND lead_id = $2 AND last_seen_at < $3""",
        anonymous_id,
        lead_id,
        seen_at,
    )
    return False


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
    """The lead's `limit` most recently seen visitors, sorted by id."""
    rows = await conn.fetch(
        """SELECT anonymous_id FROM lead_visitors WHERE lead_id = $1
           ORDER BY last_seen_at DESC, anonymous_id DESC LIMIT $2""",
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
