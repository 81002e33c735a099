"""The leads HTTP API: list and read leads, move them through the lifecycle."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from shared.app import DbPool
from shared.auth import require_api_token
from shared.events import NonBlankText, Text, Touch, UtcDatetime, normalise_email
from shared.openapi import problems
from shared.pagination import Page, cursor_param, decode_cursor, page_of
from shared.rules import LeadStage

from . import service, store
from .settings import Settings

router = APIRouter(
    prefix="/v1", tags=["leads"], dependencies=[Depends(require_api_token)], responses=problems(401, 403, 422)
)

# --- bodies and responses --------------------------------------------------------------


class StageMove(BaseModel):
    # Unknown fields are refused: a misspelt "stgae" must not be silently ignored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    stage: LeadStage
    reason: NonBlankText | None = Field(default=None, max_length=500)
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


class LeadDetail(LeadOut):
    touches: list[Touch]  # the newest 100, oldest first (GET .../touches pages through all)
    stage_history: list[StageEntry]  # oldest first
    anonymous_ids: list[str] = Field(
        description="The visitors (anonymous ids) linked to the lead by its form submissions: the 100 most"
        " recently seen, sorted."
    )


class LeadPage(Page[LeadOut]):
    pass


class TouchPage(Page[Touch]):
    pass


def lead_out(row: asyncpg.Record) -> LeadOut:
    return LeadOut(
        lead_id=row["lead_id"],
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


def lead_detail(detail: service.LeadDetail) -> LeadDetail:
    return LeadDetail(
        **lead_out(detail.lead).model_dump(),
        touches=detail.touches,
        stage_history=[StageEntry(**dict(r)) for r in detail.stage_history],
        anonymous_ids=detail.anonymous_ids,
    )


# --- routes ----------------------------------------------------------------------------

# Both lists page on (a time, a UUID): leads on (created_at, lead_id), touches on (occurred_at, event_id).
Cursor = cursor_param(datetime, uuid.UUID)


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
    cursor: Cursor = None,
) -> LeadPage:
    """Leads oldest first (created_at, then lead_id). created_from is inclusive, created_to
    exclusive; a range that ends before it starts holds no lead (an empty page)."""
    where = store.LeadFilter(
        stage=stage,
        campaign_id=campaign_id,
        channel=channel,
        touch=touch,
        email=normalise_email(email) if email is not None else None,
        created_from=created_from,
        created_to=created_to,
    )
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    rows, next_cursor = page_of(
        await service.list_leads(pool, where, after, limit + 1), limit, lambda r: (r["created_at"], r["lead_id"])
    )
    return LeadPage(items=[lead_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/leads/{lead_id}", responses=problems(404))
async def get_lead(lead_id: uuid.UUID, pool: DbPool) -> LeadDetail:
    return lead_detail(await service.lead_detail(pool, lead_id))


@router.get("/leads/{lead_id}/touches", responses=problems(404))
async def list_touches(
    lead_id: uuid.UUID,
    pool: DbPool,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> TouchPage:
    """All of a lead's touches, oldest first (occurred_at, then event_id), page by page; the
    lead's detail shows only the newest 100."""
    after = decode_cursor(cursor, datetime, uuid.UUID) if cursor else None
    rows, next_cursor = page_of(
        await service.touch_page(pool, lead_id, after, limit + 1), limit, lambda r: (r["occurred_at"], r["event_id"])
    )
    return TouchPage(items=[store.touch_of(r) for r in rows], next_cursor=next_cursor)


@router.post("/leads/{lead_id}/stage", responses=problems(400, 404, 409, 413))
async def move_stage(lead_id: uuid.UUID, body: StageMove, pool: DbPool, settings: Settings) -> LeadDetail:
    """Move a lead along its lifecycle; publishes lead.stage_changed with the change."""
    detail = await service.move_stage(
        pool, lead_id, body.stage, body.reason, body.occurred_at, clock_skew=settings.clock_skew
    )
    return lead_detail(detail)
