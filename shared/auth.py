"""API tokens with scopes: who may read, who may change things, who may handle personal data.

`EMBUDO_API_TOKENS` lists entries `name:token:scopes`, e.g.
`dashboard:s3cret:read, crm:0ther:read,write, dpo:th1rd:privacy`. The scopes of an entry are
comma-separated like the entries themselves: a piece without a colon that names a scope
belongs to the entry before it. A bare token (the form before scopes existed) still works,
with every scope, and start-up logs a warning for it.

GET and HEAD need `read`, every other method `write`; `privacy` is reserved for the
personal-data endpoints (erasure, export). A valid token without the scope gets 403, an unknown one 401.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.http import Problem

Scope = Literal["read", "write", "privacy"]
SCOPES: frozenset[str] = frozenset(get_args(Scope))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiToken:
    name: str  # in logs and errors; configured names are unique
    secret: str
    scopes: frozenset[str]
    bare: bool = False  # configured without name and scopes: full access, warned about


class InvalidTokenConfig(ValueError):
    pass


def parse_api_tokens(pieces: list[str]) -> tuple[ApiToken, ...]:
    """EMBUDO_API_TOKENS as split on commas, into tokens (see the module docstring)."""
    tokens: list[ApiToken] = []
    for n, piece in enumerate(pieces, start=1):
        if ":" not in piece:
            if tokens and not tokens[-1].bare and piece in SCOPES:  # crm:…:read,write
                last = tokens.pop()
                tokens.append(ApiToken(last.name, last.secret, last.scopes | {piece}))
            else:
                tokens.append(ApiToken(f"token-{n}", piece, SCOPES, bare=True))
            continue
        name, _, rest = piece.partition(":")
        secret, _, scope = rest.rpartition(":")
        if not (name and secret and scope):
            raise InvalidTokenConfig(f"EMBUDO_API_TOKENS entry {n}: expected name:token:scopes")
        if scope not in SCOPES:
            known = ", ".join(sorted(SCOPES))
            raise InvalidTokenConfig(f"API token {name!r}: unknown scope {scope!r} (scopes: {known})")
        tokens.append(ApiToken(name, secret, frozenset({scope})))
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise InvalidTokenConfig("API token names must be unique: a name tells operators which token was used")
    return tuple(tokens)


def warn_about_bare_tokens(tokens: tuple[ApiToken, ...]) -> None:
    for token in tokens:
        if token.bare:
            log.warning("API token %s has no name and scopes, so it has full access: configure name:token:scopes",
                        token.name)  # fmt: skip


def find_token(presented: str | None, tokens: tuple[ApiToken, ...]) -> ApiToken | None:
    """The configured token `presented` is, compared in constant time against every one."""
    if not presented:
        return None
    found = None
    for token in tokens:
        if hmac.compare_digest(presented.encode(), token.secret.encode()):
            found = token
    return found


# Declares the scheme in the OpenAPI documents; the check itself is require_scope's.
api_token_scheme = HTTPBearer(auto_error=False, description="One of the service's EMBUDO_API_TOKENS")


def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiToken:
    presented = credentials.credentials if credentials is not None else None
    token = find_token(presented, request.app.state.settings.tokens)
    if token is None:
        raise Problem(
            401,
            "A valid 'Authorization: Bearer <api token>' header is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


def method_scope(method: str) -> Scope:
    return "read" if method in ("GET", "HEAD") else "write"


async def require_api_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_token_scheme)]
) -> ApiToken:
    """Dependency: a valid token with the scope the request's method needs (read or write)."""
    token = _authenticate(request, credentials)
    _ensure_scope(token, method_scope(request.method))
    return token


def _ensure_scope(token: ApiToken, scope: Scope) -> None:
    if scope not in token.scopes:
        raise Problem(
            403,
            f"The API token '{token.name}' lacks the '{scope}' scope this request needs.",
            title="Forbidden",
            scope=scope,
        )
