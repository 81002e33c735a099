"""The leads HTTP API: list and read leads, move them through the lifecycle."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shared.app import DbPool
from shared.events import LeadStage, Text, Touch, UtcDatetime, normalise_email, to_utc, utcnow
from shared.http import Problem, require_api_token
from shared.uow import unit_of_work

from . import store
from .domain import InvalidStageTime, MoveRefused, check_move, check_stage_time
from .handlers import change_stage
from .settings import LeadsSettings

router = APIRouter(prefix="/v1", tags=["leads"], dependencies=[Depends(require_api_token)])


def _settings(request: Request) -> LeadsSettings:
    return request.app.state.settings


Settings = Annotated[LeadsSettings, Depends(_settings)]

# --- bodies and responses --------------------------------------------------------------


class StageMove(BaseModel):
    # Unknown fields are refused: a misspelt "stgae" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    stage: LeadStage
    reason: Text | None = Field(default=None, min_length=1, max_length=500)
    occurred_at: UtcDatetime | None = None  # default: now


class Profile(BaseModel):
    name: str | None
    company: str | None
    phone: str | None
    fields: dict[str, str]


class StageEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_stage: LeadStage | None = Field(serialization_alias="from")  # null: the lead's creation
    to_stage: LeadStage = Field(serialization_alias="to")
    reason: str | None
    occurred_at: datetime
    recorded_at: datetime


class LeadOut(BaseModel):
    lead_id: uuid.UUID
    email: str
    profile: Profile
    score: int
    stage: LeadStage
    created_at: datetime
    first_touch: Touch
    last_touch: Touch
    touch_count: int
    updated_at: datetime


# A lead's detail shows its newest touches only: a form a bot posts to thousands of times
# must not make one lead's page megabytes long (touch_count says how many there are).
TOUCHES_SHOWN = 100


class LeadDetail(LeadOut):
    touches: list[Touch]  # the TOUCHES_SHOWN most recent, oldest first
    stage_history: list[StageEntry]  # oldest first


class LeadPage(BaseModel):
    items: list[LeadOut]
    next_cursor: str | None


class TouchPage(BaseModel):
    items: list[Touch]
    next_cursor: str | None


def lead_out(row: asyncpg.Record) -> LeadOut:
    return LeadOut(
        lead_id=row["id"],
        email=row["email"],
        profile=Profile(name=row["name"], company=row["company"], phone=row["phone"], fields=row["fields"]),
        score=row["score"],
        stage=row["stage"],
        created_at=row["created_at"],
        first_touch=Touch.model_validate(row["first_touch"]),
        last_touch=Touch.model_validate(row["last_touch"]),
        touch_count=row["touch_count"],
        updated_at=row["updated_at"],
    )


async def lead_detail(conn: asyncpg.Connection, row: asyncpg.Record) -> LeadDetail:
    history = [StageEntry(**dict(r)) for r in await store.stage_history(conn, row["id"])]
    return LeadDetail(
        **lead_out(row).model_dump(),
        touches=await store.latest_touches(conn, row["id"], TOUCHES_SHOWN),
        stage_history=history,
    )


def invalid(field: str, message: str) -> Problem:
    return Problem(
        422,
        "The request has invalid fields.",
        title="Validation failed",
        errors=[{"field": field, "message": message, "type": "value_error"}],
    )


# --- keyset cursor: opaque to clients, the (time, id) of the page's last row -------------


def encode_cursor(moment: datetime, row_id: uuid.UUID) -> str:
    position = json.dumps([moment.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(position.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, lead_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        moment, row_id = datetime.fromisoformat(created_at), uuid.UUID(lead_id)
        if moment.tzinfo is not None:
            return to_utc(moment), row_id  # ValueError past year 1 or 9999 in UTC
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, AttributeError):  # uuid.UUID(5): AttributeError
        pass
    raise invalid("cursor", "cursor is not one this API returned")


# --- routes ----------------------------------------------------------------------------


@router.get("/leads")
async def list_leads(
    pool: DbPool,
    stage: LeadStage | None = None,
    campaign_id: Annotated[Text | None, Query(max_length=200)] = None,
    channel: Annotated[Text | None, Query(max_length=200)] = None,
    touch: Annotated[
        Literal["any", "first", "last"], Query(description="which touch campaign_id and channel match")
    ] = "any",
    email: Annotated[Text | None, Query(max_length=320)] = None,
    created_from: UtcDatetime | None = None,
    created_to: UtcDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> LeadPage:
    """Leads oldest first (created_at, then id). created_from is inclusive, created_to exclusive."""
    if created_from and created_to and created_from > created_to:
        raise invalid("created_to", "created_to is earlier than created_from")
    where = store.LeadFilter(
        stage=stage,
        campaign_id=campaign_id,
        channel=channel,
        touch=touch,
        email=normalise_email(email) if email is not None else None,
        created_from=created_from,
        created_to=created_to,
    )
    after = decode_cursor(cursor) if cursor else None
    async with pool.acquire() as conn:
        rows = await store.list_leads(conn, where, after, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    return LeadPage(items=[lead_out(r) for r in page], next_cursor=next_cursor)


@router.get("/leads/{lead_id}")
async def get_lead(lead_id: uuid.UUID, pool: DbPool) -> LeadDetail:
    async with pool.acquire() as conn:
        row = await store.get_lead(conn, lead_id)
        if row is None:
            raise Problem(404, f"No lead {lead_id}.")
        return await lead_detail(conn, row)


@router.get("/leads/{lead_id}/touches")
async def list_touches(
    lead_id: uuid.UUID,
    pool: DbPool,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> TouchPage:
    """All of a lead's touches, oldest first (occurred_at, then event_id), page by page; the
    lead's detail shows only the newest TOUCHES_SHOWN."""
    after = decode_cursor(cursor) if cursor else None
    async with pool.acquire() as conn:
        if await store.get_lead(conn, lead_id) is None:
            raise Problem(404, f"No lead {lead_id}.")
        rows = await store.touch_page(conn, lead_id, after, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["occurred_at"], page[-1]["event_id"]) if len(rows) > limit else None
    return TouchPage(items=[store.touch_of(r) for r in page], next_cursor=next_cursor)


@router.post("/leads/{lead_id}/stage")
async def move_stage(lead_id: uuid.UUID, body: StageMove, pool: DbPool, settings: Settings) -> LeadDetail:
    """Move a lead along its lifecycle; publishes lead.stage_changed with the change."""
    now = utcnow()
    async with unit_of_work(pool) as uow:
        lead = await store.lock_lead(uow.conn, lead_id)
        if lead is None:
            raise Problem(404, f"No lead {lead_id}.")
        try:
            check_move(lead["stage"], body.stage)
        except MoveRefused as exc:
            raise Problem(409, str(exc), title="Stage change not allowed", stage=lead["stage"]) from exc
        last_change = await store.last_stage_change_at(uow.conn, lead_id)
        if body.occurred_at is not None:
            occurred_at = body.occurred_at
        else:  # "now", but never before a change recorded a moment ahead of our clock
            occurred_at = max(now, last_change) if last_change else now
        try:
            check_stage_time(
                occurred_at,
                created_at=lead["created_at"],
                last_change_at=last_change,
                now=now,
                clock_skew=timedelta(seconds=settings.clock_skew_seconds),
            )
        except InvalidStageTime as exc:
            raise invalid("occurred_at", str(exc)) from exc
        updated = await change_stage(uow, lead, body.stage, body.reason, occurred_at)
        return await lead_detail(uow.conn, updated)
