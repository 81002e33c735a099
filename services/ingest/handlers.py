"""Ingest consumes nothing: it is where events enter Embudo. Kept for the common shape."""

from __future__ import annotations

from shared.consumer import Handler

HANDLERS: dict[str, Handler] = {}
