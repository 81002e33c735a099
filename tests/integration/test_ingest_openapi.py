"""Property-based run over ingest's own OpenAPI spec: requests generated from each
operation's request schema — conforming ones and deliberately broken ones — sent over real
HTTP to an in-process uvicorn backed by the real broker. Whatever a client sends, the
answer is never a 5xx, and every refusal is problem+json.

Why plain hypothesis and not schemathesis: schemathesis 3.39 generates bodies through
hypothesis-jsonschema 0.23.1 (the latest), which calls `many.more()`, removed from the
hypothesis installed here (6.170); every object body fails to generate. The strategy below
walks the same OpenAPI schemas itself.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.main import build_app
from services.ingest.settings import IngestSettings
from tests.integration.test_ingest import KEY, create_visible_topics

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 150
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values conforming to the (inlined) JSON schemas FastAPI/pydantic publish."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return st.one_of([from_schema(option) for option in schema[union]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(int(schema.get("minimum", -(2**40))), int(schema.get("maximum", 2**40)))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        return string_of(schema)
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {})),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 5), 5),
        )
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        # A const (a batch item's "type") is what picks the union member: always send it.
        required = {name for name, spec in properties.items() if name in schema.get("required", ()) or "const" in spec}
        body = st.fixed_dictionaries(
            {name: from_schema(properties[name]) for name in required},
            optional={name: from_schema(s) for name, s in properties.items() if name not in required},
        )
        extra = schema.get("additionalProperties", False)
        if extra is False:
            return body
        names = string_of({"type": "string", **schema.get("propertyNames", {})})
        extras = st.dictionaries(names, from_schema(extra if isinstance(extra, dict) else {}), max_size=3)
        return st.tuples(body, extras).map(lambda pair: {**pair[1], **pair[0]})
    return JSON_VALUES


def string_of(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    match schema.get("format"):
        case "uuid":
            return st.uuids().map(str)
        case "date-time":
            zones = st.timezones() | st.just(None)
            return st.datetimes(timezones=zones).map(lambda d: d.isoformat())
        case "email":
            return st.emails()
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))


def broken(valid: st.SearchStrategy[dict]) -> st.SearchStrategy[Any]:
    """Conforming bodies with one thing wrong, or not even JSON objects."""

    def replace_one(pair: tuple[dict, Any, int]) -> Any:
        body, value, pick = pair
        if not isinstance(body, dict) or not body:
            return value
        body = dict(body)
        body[sorted(body)[pick % len(body)]] = value
        return body

    def drop_one(pair: tuple[dict, int]) -> Any:
        body, pick = pair
        if isinstance(body, dict) and body:
            body = dict(body)
            del body[sorted(body)[pick % len(body)]]
        return body

    return st.one_of(
        st.tuples(valid, JSON_VALUES, st.integers(0, 100)).map(replace_one),
        st.tuples(valid, st.integers(0, 100)).map(drop_one),
        st.tuples(valid, st.text(min_size=1, max_size=10), JSON_VALUES).map(
            lambda t: {**t[0], t[1]: t[2]} if isinstance(t[0], dict) else t[0]
        ),
        JSON_VALUES,
    )


def requests_for(media: dict[str, Any]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(content type, body) pairs for one operation, from its documented media types."""
    options = []
    for content_type, spec in media.items():
        valid = from_schema(spec["schema"])
        bodies = st.one_of(valid, broken(valid))
        if content_type == "application/json":
            options.append(bodies.map(lambda b: ("application/json", json.dumps(b).encode())))
        else:  # a form: flat string values only
            forms = bodies.filter(lambda b: isinstance(b, dict)).map(
                lambda b: {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in b.items()}
            )
            options.append(forms.map(lambda b, ct=content_type: (ct, str(httpx.QueryParams(b)).encode())))
    # The wrong content type, or bytes that are not JSON at all.
    options.append(
        st.tuples(
            st.sampled_from(["text/plain", "", "application/json", "multipart/form-data"]), st.binary(max_size=64)
        )
    )
    return st.one_of(options)


async def test_no_request_generated_from_the_spec_gets_a_5xx(make_settings, topics, topic_prefix):
    await create_visible_topics(topics, topic_prefix)  # a valid event must not wait on topic creation
    app = build_app(
        await make_settings(IngestSettings, database=False, write_keys=KEY, allowed_redirect_hosts="example.com")
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn stopped during start-up"
            await asyncio.sleep(0.05)
        base_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        operations = {
            path: spec["post"]["requestBody"]["content"]
            for path, spec in app.openapi()["paths"].items()
            if "post" in spec
        }
        assert set(operations) == {"/v1/form-submissions", "/v1/campaign-events", "/v1/batch"}
        statuses: list[int] = []

        def explore(path: str, media: dict[str, Any]) -> None:
            with httpx.Client(base_url=base_url, timeout=30) as http:

                @given(request=requests_for(media), auth=st.sampled_from([KEY, KEY, KEY, None, "wrong"]))
                @settings(
                    max_examples=EXAMPLES_PER_OPERATION,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def never_a_server_error(request: tuple[str, bytes], auth: str | None) -> None:
                    content_type, body = request
                    headers = {"Content-Type": content_type} if content_type else {}
                    if auth:
                        headers["Authorization"] = f"Bearer {auth}"
                    response = http.post(path, content=body, headers=headers)
                    statuses.append(response.status_code)
                    assert response.status_code < 500, (response.status_code, response.text, body[:500])
                    if response.status_code >= 400:
                        assert response.headers["content-type"] == "application/problem+json"
                    if response.status_code == 202:
                        accepted = response.json()
                        assert accepted["accepted"] == len(accepted["event_ids"]) >= 1

                never_a_server_error()

        # The server runs on this event loop; the synchronous client works in a thread.
        for path, media in operations.items():
            await asyncio.to_thread(explore, path, media)
        assert statuses.count(202) >= 10, "hardly any valid event was generated"
        assert {400, 401, 415, 422} <= set(statuses), sorted(set(statuses))
    finally:
        server.should_exit = True
        await serving


def test_generated_datetimes_cover_naive_and_future_values():
    # A guard on the generator itself: it must produce the timestamps the API refuses.
    seen = {"naive": False, "future": False}

    @given(string_of({"type": "string", "format": "date-time"}))
    @settings(max_examples=300, database=None)
    def record(value: str) -> None:
        from datetime import UTC, datetime

        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            seen["naive"] = True
        elif parsed > datetime.now(UTC) + timedelta(minutes=5):
            seen["future"] = True

    record()
    assert seen == {"naive": True, "future": True}
