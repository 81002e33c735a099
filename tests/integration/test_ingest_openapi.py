"""Property-based run over ingest's own OpenAPI spec: requests generated from each
operation's request schema — conforming ones and deliberately broken ones — sent over real
HTTP to an in-process uvicorn backed by the real broker. Whatever a client sends, the
answer is never a 5xx, and every refusal is problem+json.

Why plain hypothesis and not schemathesis: schemathesis 3.39 generates bodies through
hypothesis-jsonschema 0.23.1 (the latest), which calls `many.more()`, removed from the
hypothesis installed here (6.170); every object body fails to generate. The strategies in
tests/support.py (shared with test_api_fuzz.py) walk the same OpenAPI schemas themselves.
"""

from __future__ import annotations

import asyncio
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
from tests.support import BODY_JUNK, JSON_VALUES, requests_for, string_of

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 150


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

        def explore(path: str, media: dict[str, Any], junk: st.SearchStrategy[Any]) -> None:
            with httpx.Client(base_url=base_url, timeout=30) as http:

                @given(request=requests_for(media, junk=junk), auth=st.sampled_from([KEY, KEY, KEY, None, "wrong"]))
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
        # Plain junk first (mostly well-formed, so many events get through to the broker), then
        # the nastier values the other services' fuzz uses (1e400, deep nesting, NUL, 100 kB):
        # those bodies are mostly refused, so they are a pass of their own.
        for junk in (JSON_VALUES, BODY_JUNK):
            for path, media in operations.items():
                await asyncio.to_thread(explore, path, media, junk)
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
