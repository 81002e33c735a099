"""The sales service's SQL. Plain async functions over an asyncpg connection."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from shared.events import Attribution, Objection
from shared.rules import CLOSED_DEAL_STAGES

from .domain import DealLead

Row = asyncpg.Record

# --- the lead replica -------------------------------------------------------------------


async def upsert_lead(
    conn: asyncpg.Connection,
    *,
    lead_id: uuid.UUID,
    email: str | None,
    created_at: datetime,
    attribution: Attribution,
    stage: str | None,
) -> None:
    """Insert or refresh a lead. A NULL email or stage keeps what is known; a new row
    without a stage starts as 'lead'."""
    await conn.execute(
        """INSERT INTO leads (lead_id, email, stage, created_at, attribution)
           VALUES ($1, $2, coalesce($3, 'lead'), $4, $5)
           ON CONFLICT (lead_id) DO UPDATE SET
               email = coalesce(EXCLUDED.email, leads.email),
               stage = coalesce($3, leads.stage),
               created_at = EXCLUDED.created_at,
               attribution = EXCLUDED.attribution,
               updated_at = now()""",
        lead_id,
        email,
        stage,
        created_at,
        attribution.model_dump(mode="json"),
    )


async def get_lead(conn: asyncpg.Connection, lead_id: uuid.UUID) -> Row | None:
    return await conn.fetchrow("SELECT * FROM leads WHERE lead_id = $1", lead_id)


def deal_lead(lead: Row) -> DealLead:
    return DealLead(lead["lead_id"], lead["created_at"], Attribution.model_validate(lead["attribution"]))


# --- deals ------------------------------------------------------------------------------


async def insert_deal(
    conn: asyncpg.Connection,
    *,
    deal_id: uuid.UUID,
    lead_id: uuid.UUID,
    name: str | None,
    stage: str,
    amount: Decimal | None,
    currency: str,
    expected_close_date: date | None,
    created_at: datetime,
    source_event_id: uuid.UUID | None = None,
) -> Row | None:
    """The new deal with its first history row; None when `source_event_id` already made one.
    A deal from a handoff (`source_event_id`) waits for sales' answer; one sales opens itself
    is taken at once (accepted_at = created_at)."""
    deal = await conn.fetchrow(
        """INSERT INTO deals (deal_id, lead_id, name, stage, amount, currency, expected_close_date,
                              created_at, stage_entered_at, source_event_id, handoff, accepted_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9::uuid IS NOT NULL,
                   CASE WHEN $9::uuid IS NULL THEN $8::timestamptz END)
           ON CONFLICT (source_event_id) DO NOTHING
           RETURNING *""",
        deal_id,
        lead_id,
        name,
        stage,
        amount,
        currency,
        expected_close_date,
        created_at,
        source_event_id,
    )
    if deal is not None:
        await add_history(conn, deal_id, None, stage, created_at)
    return deal


async def add_history(
    conn: asyncpg.Connection, deal_id: uuid.UUID, from_stage: str | None, to_stage: str, occurred_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO deal_stage_history (deal_id, from_stage, to_stage, occurred_at) VALUES ($1, $2, $3, $4)",
        deal_id,
        from_stage,
        to_stage,
        occurred_at,
    )


async def get_deal(conn: asyncpg.Connection, deal_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    # FOR UPDATE: concurrent changes to one deal queue up instead of both passing the checks.
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM deals WHERE deal_id = $1{lock}", deal_id)


async def change_stage(
    conn: asyncpg.Connection, deal_id: uuid.UUID, from_stage: str, to_stage: str, occurred_at: datetime
) -> None:
    await conn.execute(
        """UPDATE deals SET stage = $2::text, stage_entered_at = $3::timestamptz, updated_at = now(),
               closed_at = CASE WHEN $2::text = ANY($4::text[]) THEN $3::timestamptz END
           WHERE deal_id = $1""",
        deal_id,
        to_stage,
        occurred_at,
        list(CLOSED_DEAL_STAGES),
    )
    await add_history(conn, deal_id, from_stage, to_stage, occurred_at)


async def update_details(
    conn: asyncpg.Connection,
    deal_id: uuid.UUID,
    *,
    amount: Decimal | None,
    expected_close_date: date | None,
) -> Row:
    """Set what is given (None keeps the current value); the deal as it is now."""
    return await conn.fetchrow(
        """UPDATE deals SET amount = coalesce($2, amount),
               expected_close_date = coalesce($3, expected_close_date), updated_at = now()
           WHERE deal_id = $1 RETURNING *""",
        deal_id,
        amount,
        expected_close_date,
    )


async def close_won(
    conn: asyncpg.Connection, deal_id: uuid.UUID, from_stage: str, amount: Decimal, occurred_at: datetime
) -> None:
    await conn.execute("UPDATE deals SET amount = $2 WHERE deal_id = $1", deal_id, amount)
    await change_stage(conn, deal_id, from_stage, "won", occurred_at)


async def close_lost(
    conn: asyncpg.Connection,
    deal_id: uuid.UUID,
    from_stage: str,
    reason: str,
    objections: list[str],
    occurred_at: datetime,
) -> None:
    await conn.execute(
        "UPDATE deals SET lost_reason = $2, objections = $3 WHERE deal_id = $1", deal_id, reason, objections
    )
    await change_stage(conn, deal_id, from_stage, "lost", occurred_at)


async def accept(conn: asyncpg.Connection, deal_id: uuid.UUID, at: datetime) -> None:
    await conn.execute("UPDATE deals SET accepted_at = $2, updated_at = now() WHERE deal_id = $1", deal_id, at)


async def reject(conn: asyncpg.Connection, deal_id: uuid.UUID, from_stage: str, reason: str, at: datetime) -> None:
    """Close a handoff as rejected (one statement: the stage and the rejection go together)."""
    await conn.execute(
        """UPDATE deals SET stage = 'rejected', stage_entered_at = $2, closed_at = $2, rejected_at = $2,
               rejection_reason = $3, updated_at = now()
           WHERE deal_id = $1""",
        deal_id,
        at,
        reason,
    )
    await add_history(conn, deal_id, from_stage, "rejected", at)


async def add_objections(
    conn: asyncpg.Connection, deal_id: uuid.UUID, objections: list[Objection], stage: str, at: datetime
) -> None:
    await conn.executemany(
        "INSERT INTO deal_objections (deal_id, key, text, stage, occurred_at) VALUES ($1, $2, $3, $4, $5)",
        [(deal_id, o.key, o.text, stage, at) for o in objections],
    )


async def objections(conn: asyncpg.Connection, deal_id: uuid.UUID) -> list[Row]:
    return await conn.fetch(
        """SELECT key, text, stage, occurred_at, recorded_at FROM deal_objections
           WHERE deal_id = $1 ORDER BY id""",
        deal_id,
    )


async def stage_history(conn: asyncpg.Connection, deal_id: uuid.UUID) -> list[Row]:
    return await conn.fetch(
        "SELECT from_stage, to_stage, occurred_at, recorded_at FROM deal_stage_history WHERE deal_id = $1 ORDER BY id",
        deal_id,
    )


async def list_deals(
    conn: asyncpg.Connection,
    *,
    stage: str | None,
    lead_id: uuid.UUID | None,
    campaign_id: str | None,
    after_seq: int | None,
    limit: int,
) -> list[Row]:
    """Oldest first (in the order sales recorded them: created_at can be backfilled, seq
    cannot), keyset-paginated on seq. campaign_id matches the lead's first or last touch."""
    return await conn.fetch(
        """SELECT d.* FROM deals d JOIN leads l USING (lead_id)
           WHERE ($1::text IS NULL OR d.stage = $1)
             AND ($2::uuid IS NULL OR d.lead_id = $2)
             AND ($3::text IS NULL OR l.attribution -> 'first_touch' ->> 'campaign_id' = $3
                                   OR l.attribution -> 'last_touch' ->> 'campaign_id' = $3)
             AND ($4::bigint IS NULL OR d.seq > $4)
           ORDER BY d.seq
           LIMIT $5""",
        stage,
        lead_id,
        campaign_id,
        after_seq,
        limit,
    )


# --- customers and revenue --------------------------------------------------------------


async def become_customer(conn: asyncpg.Connection, lead_id: uuid.UUID, deal_id: uuid.UUID, at: datetime) -> bool:
    """True when this win made the lead a customer (the first won deal sales records).
    A backfilled win that happened earlier moves customer_since back, not first_deal_id:
    published events are never rewritten."""
    inserted = await conn.fetchval(
        """INSERT INTO customers (lead_id, first_deal_id, customer_since) VALUES ($1, $2, $3)
           ON CONFLICT (lead_id) DO NOTHING RETURNING true""",
        lead_id,
        deal_id,
        at,
    )
    if not inserted:
        await conn.execute(
            "UPDATE customers SET customer_since = least(customer_since, $2) WHERE lead_id = $1", lead_id, at
        )
    return bool(inserted)


async def get_customer(conn: asyncpg.Connection, lead_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM customers WHERE lead_id = $1{lock}", lead_id)


async def won_deals(conn: asyncpg.Connection, lead_id: uuid.UUID) -> list[Row]:
    return await conn.fetch("SELECT * FROM deals WHERE lead_id = $1 AND stage = 'won' ORDER BY closed_at, seq", lead_id)


async def insert_revenue(
    conn: asyncpg.Connection,
    *,
    revenue_id: uuid.UUID,
    lead_id: uuid.UUID,
    amount: Decimal,
    currency: str,
    kind: str,
    occurred_at: datetime,
) -> Row | None:
    """The new record; None when `revenue_id` (the client's event_id) is already recorded."""
    return await conn.fetchrow(
        """INSERT INTO revenue (revenue_id, lead_id, amount, currency, kind, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (revenue_id) DO NOTHING RETURNING *""",
        revenue_id,
        lead_id,
        amount,
        currency,
        kind,
        occurred_at,
    )


async def get_revenue(conn: asyncpg.Connection, revenue_id: uuid.UUID) -> Row | None:
    return await conn.fetchrow("SELECT * FROM revenue WHERE revenue_id = $1", revenue_id)


async def customer_revenue(conn: asyncpg.Connection, lead_id: uuid.UUID) -> list[Row]:
    return await conn.fetch("SELECT * FROM revenue WHERE lead_id = $1 ORDER BY occurred_at, seq", lead_id)
