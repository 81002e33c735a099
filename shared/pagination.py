"""Keyset pagination, the same in every service.

Lists page oldest first, in a stable order on a unique key (e.g. (created_at, lead_id)).
`next_cursor` is opaque to clients (null on the last page): the last row's key as fixed-width
hex, 16 digits per time or integer, 32 per UUID. Any string of that shape is a position
(`Cursor` gives the pattern the OpenAPI document states), so there is no "invalid cursor":
one past every row is an empty last page; anything of another shape is a 422.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

ItemT = TypeVar("ItemT")
KeyPart = datetime | uuid.UUID | int

EPOCH = datetime(1, 1, 1, tzinfo=UTC)
MAX_INT = 2**63 - 1  # keys are bigints or narrower
WIDTH = {datetime: 16, int: 16, uuid.UUID: 32}


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None


def cursor_param(*kinds: type) -> Any:
    """The `cursor` query parameter of a list keyed by `kinds`."""
    digits = sum(WIDTH[kind] for kind in kinds)
    return Annotated[
        str | None,
        Query(pattern=f"^[0-9a-f]{{{digits}}}$", description="next_cursor of the previous page (opaque)"),
    ]


def _hex(part: KeyPart) -> str:
    if isinstance(part, datetime):
        micros = (part - EPOCH) // timedelta(microseconds=1)
        return f"{micros:016x}"
    if isinstance(part, uuid.UUID):
        return part.hex
    return f"{part:016x}"


def encode_cursor(*key: KeyPart) -> str:
    return "".join(_hex(part) for part in key)


def _part(digits: str, kind: type) -> KeyPart:
    number = int(digits, 16)
    if kind is uuid.UUID:
        return uuid.UUID(int=number)
    if kind is datetime:
        # Past the last representable moment: a position after every row.
        return EPOCH + timedelta(microseconds=number) if number <= _MAX_MICROS else datetime.max.replace(tzinfo=UTC)
    return min(number, MAX_INT)


_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


def decode_cursor(cursor: str, *kinds: type) -> tuple:
    """The key `encode_cursor` packed (the route's `cursor_param` has checked its shape)."""
    parts, start = [], 0
    for kind in kinds:
        parts.append(_part(cursor[start : start + WIDTH[kind]], kind))
        start += WIDTH[kind]
    return tuple(parts)


def page_of(rows: Sequence[Any], limit: int, key_of: Callable[[Any], tuple]) -> tuple[list, str | None]:
    """Split `limit + 1` fetched rows into the page and the cursor of the next one."""
    page = list(rows[:limit])
    return page, (encode_cursor(*key_of(page[-1])) if len(rows) > limit else None)
