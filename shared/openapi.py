"""What the OpenAPI documents say about answers the shared plumbing gives: the problem+json
body of every 4xx/5xx, the headers that come with some of them, and the configured currency.

Routes declare the problems they can answer with, `responses=problems(404, 409)`; routers
declare what all their routes share (`problems(401, 422)` behind a token).
`tests/e2e/test_openapi_contract.py` (Schemathesis) holds the servers to these documents.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from shared.events import CURRENCY_SCHEMA_MARK
from shared.http import PROBLEM_JSON
from shared.rules import currency_pattern


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ProblemDetails(BaseModel):
    """RFC 9457. Some problems add members of their own (e.g. `items`, `event_ids`)."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None  # 422: each invalid field, never its value


_PROBLEM_SCHEMA = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
_FIELD_ERROR_SCHEMA = _PROBLEM_SCHEMA.pop("$defs")["FieldError"]


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


RETRY_AFTER = _header("Seconds to wait before retrying", {"type": "string", "pattern": "^[0-9]+$"})

PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Malformed JSON body", {}),
    401: (
        "Missing or unknown credentials",
        {"WWW-Authenticate": _header("The scheme to authenticate with", {"type": "string"})},
    ),
    403: ("The API token lacks the scope this request needs (read, write or privacy)", {}),
    404: ("No such resource", {}),
    409: ("The resource's current state refuses the request", {}),
    413: ("Request body (or one event) over the size limit", {}),
    415: ("Unsupported Content-Type", {}),
    422: ("Invalid fields (listed in `errors`)", {}),
    429: ("Rate limit exceeded", {"Retry-After": RETRY_AFTER}),
    503: ("A dependency did not answer in time", {"Retry-After": RETRY_AFTER}),
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these problem statuses, each with its problem+json body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, headers = PROBLEMS[code]
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        if headers:
            response["headers"] = headers
        responses[code] = response
    return responses


def _mark_currency(node: Any, pattern: str) -> None:
    if isinstance(node, dict):
        if node.pop(CURRENCY_SCHEMA_MARK, False):
            node["pattern"] = pattern
        for value in node.values():
            _mark_currency(value, pattern)
    elif isinstance(node, list):
        for value in node:
            _mark_currency(value, pattern)


def install_openapi(app: FastAPI, currency: str) -> None:
    """Generate the document once, with the shared components and the configured currency."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["ProblemDetails"] = _PROBLEM_SCHEMA
            schemas["FieldError"] = _FIELD_ERROR_SCHEMA
            # FastAPI's own 422 model is never sent: every 422 is a ProblemDetails.
            if "#/components/schemas/HTTPValidationError" in json.dumps(document.get("paths", {})):
                raise RuntimeError("an operation documents FastAPI's 422: declare problems(422) on its router")
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            _mark_currency(document, currency_pattern(currency))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
