"""The ways a use case says no. Raised by domain rules and service functions, which know
nothing of HTTP; `shared.http` turns each kind into one problem+json answer (422, 404, 409)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of the refusals below. `extra` members are added to the problem document."""

    title: str | None = None

    def __init__(self, detail: str, *, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if title is not None:
            self.title = title
        self.extra = extra


class InvalidField(DomainError):
    """Well-formed input that breaks a rule, naming the field (422 Validation failed)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class NotFound(DomainError):
    """The thing the request names does not exist (404)."""


class Conflict(DomainError):
    """The request is valid but the current state refuses it (409)."""


class TooLarge(DomainError):
    """What was sent is over a size limit (413)."""


class RateLimited(DomainError):
    """The caller used up its allowance; it may retry after `retry_after` seconds (429)."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class OutOfOrder(Conflict):
    """A moment earlier than the resource's own history allows (409): e.g. a stage change
    dated before the lead was created. Named by `field`, like an invalid field."""

    title = "Out of order"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)
        self.field = field
        self.message = message
