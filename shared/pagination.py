"""Keyset pagination, the same in every service.

Lists page oldest first, in a stable order on a unique key (e.g. (created_at, lead_id)).
`next_cursor` is opaque to clients: base64url of the JSON list of the last row's key, and
null on the last page. A cursor that this API did not hand out is a 422 on `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel

from shared.errors import InvalidField
from shared.events import to_utc

ItemT = TypeVar("ItemT")
KeyPart = datetime | uuid.UUID | int

MAX_KEY_INT = 2**63 - 1  # keys are bigints or narrower


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None


def encode_cursor(*key: KeyPart) -> str:
    parts = [part.isoformat() if isinstance(part, datetime) else part for part in key]
    text = json.dumps([str(p) if isinstance(p, uuid.UUID) else p for p in parts])
    return base64.urlsafe_b64encode(text.encode()).decode()


def _part(value: object, kind: type) -> KeyPart:
    if kind is datetime and isinstance(value, str):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is not None:
            return to_utc(moment)  # ValueError past year 1 or 9999 in UTC
    elif kind is uuid.UUID and isinstance(value, str):
        return uuid.UUID(value)
    elif kind is int and type(value) is int and 0 <= value <= MAX_KEY_INT:
        return value
    raise ValueError(value)


def decode_cursor(cursor: str, *kinds: type) -> tuple:
    """The key `encode_cursor` packed, checked part by part against `kinds`."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if isinstance(parts, list) and len(parts) == len(kinds):
            return tuple(_part(value, kind) for value, kind in zip(parts, kinds, strict=True))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        pass
    raise InvalidField("cursor", "cursor is not one this API returned")


def page_of(rows: list, limit: int, key_of) -> tuple[list, str | None]:
    """Split `limit + 1` fetched rows into the page and the cursor of the next one."""
    page = rows[:limit]
    return page, (encode_cursor(*key_of(page[-1])) if len(rows) > limit else None)
