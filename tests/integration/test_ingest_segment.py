"""The Segment-compatible surface's wire rules over plain HTTP, against the real broker:
the ways of sending the write key, text/plain and gzip bodies, the limits (after
decompression, and no zip bombs), per-message leniency and its counters, 400/401/413/415/429.
The real SDKs are in tests/e2e/test_segment_sdks.py."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
import zlib
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.ingest.main import build_app
from services.ingest.settings import IngestSettings
from shared.events import Envelope, FormSubmission, PageView, utcnow
from shared.topics import FORM_SUBMISSIONS, PAGE_VIEWS
from tests.integration.test_ingest import create_visible_topics
from tests.support import serve

pytestmark = pytest.mark.integration

KEY = "segment-write-key"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
JSON_BODY = {"Content-Type": "application/json"}
PROBLEM = "application/problem+json"


def page(visitor: str = "visitor-1", **fields) -> dict:
    return {
        "type": "page",
        "anonymousId": visitor,
        "messageId": str(uuid.uuid4()),
        "properties": {"url": "https://www.example.com/pricing", "title": "Pricing"},
        **fields,
    }


def identify(email: str = "ana@example.com", **traits) -> dict:
    return {"type": "identify", "anonymousId": "visitor-1", "traits": {"email": email, **traits}}


@pytest.fixture
async def settings(make_settings, topics, topic_prefix):
    await create_visible_topics(topics, topic_prefix)

    async def make(**overrides) -> IngestSettings:
        return await make_settings(IngestSettings, database=False, write_keys=f"{KEY},other-key", **overrides)

    return make


@pytest.fixture
async def client(settings):
    async with serve(build_app(await settings())) as http:
        yield http


@pytest.fixture
async def page_views(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + PAGE_VIEWS.name)


@pytest.fixture
async def forms(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + FORM_SUBMISSIONS.name)


async def post(client, path: str, body: object, headers: dict | None = None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(f"/segment/v1/{path}", content=content, headers=headers or {**JSON_BODY, **BASIC})


def assert_success(response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}


def assert_refused(response, status: int, code: str) -> dict:
    """A problem+json answer that is also Segment's error body (`code`, `message`)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert (body["status"], body["code"], body["success"]) == (status, code, False)
    assert body["message"] == body["detail"]
    return body


async def counted(client, name: str, **labels: str) -> float:
    """A counter's value in /metrics (0 when the labels were never counted)."""
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def events_of(records) -> list[Envelope]:
    return [Envelope.from_bytes(record.value) for record in records]


# --- the write key ----------------------------------------------------------------------


async def test_basic_auth_with_the_key_as_username_delivers_a_page_view(client, page_views):
    message = page(context={"campaign": {"name": "spring", "source": "google", "medium": "cpc"}})
    assert_success(await post(client, "batch", {"batch": [message]}))
    [record] = await page_views.read_until(lambda r: len(r) >= 1)
    assert record.key == b"visitor-1"
    event = Envelope.from_bytes(record.value)
    assert str(event.event_id) == message["messageId"]
    assert isinstance(event.data, PageView) and event.data.url == "https://www.example.com/pricing"
    assert (event.data.utm.campaign, event.data.utm.source, event.data.title) == ("spring", "google", "Pricing")


async def test_the_key_in_the_body_as_analytics_js_sends_it_as_text_plain(client, page_views):
    message = {**page("visitor-2"), "writeKey": KEY}
    assert_success(await post(client, "p", message, headers={"Content-Type": "text/plain;charset=UTF-8"}))
    [event] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    assert event.data.anonymous_id == "visitor-2"


async def test_a_batch_without_a_key_of_its_own_takes_its_first_messages(client, page_views):
    body = {"batch": [{**page("visitor-14"), "writeKey": KEY}, page("visitor-15")]}
    assert_success(await post(client, "b", body, headers={"Content-Type": "text/plain"}))
    events = events_of(await page_views.read_until(lambda r: len(r) >= 2))
    assert sorted(e.data.anonymous_id for e in events) == ["visitor-14", "visitor-15"]


async def test_bearer_keeps_working(client, page_views):
    headers = {**JSON_BODY, "Authorization": f"Bearer {KEY}"}
    assert_success(await post(client, "page", page("visitor-3"), headers=headers))
    [event] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    assert event.data.anonymous_id == "visitor-3"


def basic(user_and_password: bytes) -> dict:
    return {**JSON_BODY, "Authorization": "Basic " + base64.b64encode(user_and_password).decode()}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (JSON_BODY, {"batch": [page()]}),  # no key at all
        (basic(b"wrong-key:"), {"batch": [page()]}),
        ({**JSON_BODY, "Authorization": "Bearer wrong-key"}, {"batch": [page()]}),
        (JSON_BODY, {"batch": [page()], "writeKey": "wrong-key"}),
        (JSON_BODY, {"batch": [page()], "writeKey": 12}),
        (JSON_BODY, {"batch": [{**page(), "writeKey": "wrong-key"}, {**page(), "writeKey": KEY}]}),
        (JSON_BODY, {"batch": [{**page(), "writeKey": KEY}], "writeKey": "wrong-key"}),  # the batch's key counts
        ({**JSON_BODY, "Authorization": "Basic not-base64!"}, {"batch": [page()]}),
        (basic(b":" + KEY.encode()), {"batch": [page()]}),  # the key is the username, not the password
        ({**JSON_BODY, "Authorization": f"Digest {KEY}"}, {"batch": [page()]}),
        # A header that presents a wrong key is not rescued by the body's.
        (basic(b"wrong-key:"), {"batch": [page()], "writeKey": KEY}),
        (JSON_BODY, b"not json, and no key"),
    ],
)
async def test_a_missing_or_wrong_key_is_401_and_publishes_nothing(client, page_views, headers, body):
    response = await post(client, "batch", body, headers=headers)
    assert_refused(response, 401, "unauthorized")
    assert "Basic" in response.headers["www-authenticate"]
    assert await page_views.quiet(1) == []


# --- bodies -----------------------------------------------------------------------------


async def test_a_gzip_body_is_inflated(client, forms):
    body = gzip.compress(json.dumps({"batch": [identify(name="Ana")]}).encode())
    response = await post(client, "batch", body, headers={**JSON_BODY, **BASIC, "Content-Encoding": "gzip"})
    assert_success(response)
    [event] = events_of(await forms.read_until(lambda r: len(r) >= 1))
    assert isinstance(event.data, FormSubmission) and event.data.name == "Ana"


async def test_a_gzip_bomb_is_413_without_being_inflated_to_its_end(client):
    zeros = gzip.compress(b"\0" * 10_000_000, compresslevel=9)  # 10 MB of zeros in ~10 KB
    assert len(zeros) < 20_000
    headers = {**JSON_BODY, **BASIC, "Content-Encoding": "gzip"}
    assert_refused(await post(client, "batch", zeros, headers=headers), 413, "too_large")
    # Cut in half, the stream is broken near its end: only a server that inflated it all
    # would notice (400). Stopping at the limit, long before, it answers 413.
    assert_refused(await post(client, "batch", zeros[: len(zeros) // 2], headers=headers), 413, "too_large")
    small = gzip.compress(json.dumps({"batch": []}).encode())
    assert_refused(await post(client, "batch", small[:-6], headers=headers), 400, "malformed_json")


async def test_concatenated_gzip_members_are_one_body(client, page_views):
    text = json.dumps({"batch": [page("visitor-4")]}).encode()
    body = gzip.compress(text[:10]) + gzip.compress(text[10:])
    assert_success(await post(client, "b", body, headers={**JSON_BODY, **BASIC, "Content-Encoding": "gzip"}))
    [event] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    assert event.data.anonymous_id == "visitor-4"


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress"])
async def test_another_content_encoding_is_415(client, encoding):
    body = zlib.compress(json.dumps({"batch": [page()]}).encode())
    response = await post(client, "batch", body, headers={**JSON_BODY, **BASIC, "Content-Encoding": encoding})
    assert_refused(response, 415, "unsupported_encoding")


@pytest.mark.parametrize("media", ["application/x-www-form-urlencoded", "application/xml", "multipart/form-data"])
async def test_another_content_type_is_415(client, media):
    response = await post(client, "batch", {"batch": [page()]}, headers={**BASIC, "Content-Type": media})
    assert_refused(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("batch", b"{not json", "malformed_json"),
        ("t", b"", "malformed_json"),
        ("batch", b"[" * 100_000, "malformed_json"),  # deeper than any parser goes
        ("batch", b"[]", "invalid_body"),
        ("i", b'"identify"', "invalid_body"),
        ("batch", b"{}", "invalid_body"),
        ("b", b'{"batch": {"type": "page"}}', "invalid_body"),
    ],
)
async def test_a_body_that_is_no_json_object_or_no_batch_is_400(client, page_views, path, body, code):
    assert_refused(await post(client, path, body), 400, code)


# --- limits -----------------------------------------------------------------------------


async def test_a_message_over_32_kb_is_skipped_and_counted_and_its_neighbours_delivered(client, page_views):
    before = await counted(client, "embudo_ingest_segment_skipped_total", type="page", reason="too_large")
    huge = page("visitor-huge", properties={"url": "https://www.example.com/", "filler": "x" * (33 * 1024)})
    batch = [page("visitor-5"), huge, page("visitor-6")]
    assert_success(await post(client, "batch", {"batch": batch}))
    events = events_of(await page_views.read_until(lambda r: len(r) >= 2))
    assert sorted(e.data.anonymous_id for e in events) == ["visitor-5", "visitor-6"]
    after = await counted(client, "embudo_ingest_segment_skipped_total", type="page", reason="too_large")
    assert after == before + 1
    assert len(await page_views.quiet(1)) == 2


async def test_a_batch_over_500_kb_is_413_but_many_small_messages_are_fine(client, page_views):
    many = [page(f"visitor-{i}") for i in range(1_000)]  # no count limit on this surface
    assert len(json.dumps({"batch": many})) < 500 * 1024
    assert_success(await post(client, "batch", {"batch": many}))
    assert len(await page_views.read_until(lambda r: len(r) >= 1_000)) == 1_000

    filler = {"properties": {"url": "https://www.example.com/", "filler": "x" * 32_000}}
    over = [page(f"visitor-{i}", **filler) for i in range(16)]  # each under 32 KB, together over 500 KB
    body = json.dumps({"batch": over}).encode()
    assert 500 * 1024 < len(body) < 512 * 1024  # under the raw request limit: this surface's own limit
    assert_refused(await post(client, "batch", body), 413, "too_large")
    headers = {**JSON_BODY, **BASIC, "Content-Encoding": "gzip"}
    assert_refused(await post(client, "batch", gzip.compress(body), headers=headers), 413, "too_large")


async def test_a_single_message_over_32_kb_is_413(client):
    huge = page(properties={"url": "https://www.example.com/", "filler": "x" * (33 * 1024)})
    assert_refused(await post(client, "page", huge), 413, "too_large")


async def test_an_event_over_the_event_limit_once_mapped_is_skipped_like_a_large_message(settings, page_views):
    async with serve(build_app(await settings(max_event_bytes=600))) as client:
        before = await counted(client, "embudo_ingest_segment_skipped_total", type="page", reason="too_large")
        long_title = page("visitor-7", properties={"url": "https://www.example.com/", "title": "t" * 400})
        assert_success(await post(client, "batch", {"batch": [long_title, page("visitor-8")]}))
        [event] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
        assert event.data.anonymous_id == "visitor-8"
        assert await counted(client, "embudo_ingest_segment_skipped_total", type="page", reason="too_large") == (
            before + 1
        )


async def test_a_key_over_its_rate_gets_429_with_retry_after(settings, page_views):
    async with serve(build_app(await settings(rate_limit_per_second=0.001, rate_limit_burst=1))) as client:
        assert_success(await post(client, "page", page()))
        response = await post(client, "page", page())
        assert response.status_code == 429, response.text
        assert int(response.headers["retry-after"]) >= 1


# --- leniency ---------------------------------------------------------------------------


async def test_a_batch_delivers_what_it_can_and_counts_the_rest_by_type_and_reason(client, page_views, forms):
    skipped = "embudo_ingest_segment_skipped_total"
    cases = {
        ("page", "unmapped"): {"type": "page", "anonymousId": "no-url"},
        ("identify", "invalid"): identify("not-an-email"),
        ("track", "unmapped"): {"type": "track", "event": "Signed Up", "properties": {}},
        ("unknown", "malformed"): "not a message",
    }
    before = {labels: await counted(client, skipped, type=labels[0], reason=labels[1]) for labels in cases}
    ignored_before = await counted(client, "embudo_ingest_segment_ignored_total", type="screen")
    batch = [page("visitor-9"), *cases.values(), identify("bea@example.com"), {"type": "screen", "name": "Home"}]
    assert_success(await post(client, "batch", {"batch": batch}))

    [view] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    [form] = events_of(await forms.read_until(lambda r: len(r) >= 1))
    assert view.data.anonymous_id == "visitor-9" and form.data.email == "bea@example.com"
    for labels in cases:
        assert await counted(client, skipped, type=labels[0], reason=labels[1]) == before[labels] + 1, labels
    assert await counted(client, "embudo_ingest_segment_ignored_total", type="screen") == ignored_before + 1
    assert len(await page_views.quiet(1)) == 1 and len(forms.records) == 1


async def test_an_unset_clock_is_counted_as_clamped_and_the_event_kept(client, page_views):
    before = await counted(client, "embudo_ingest_segment_clamped_total", type="page")
    assert_success(await post(client, "p", page("visitor-10", timestamp="1970-01-01T00:00:00Z")))
    [event] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    assert event.occurred_at.year > 2000
    assert await counted(client, "embudo_ingest_segment_clamped_total", type="page") == before + 1


# --- routes -----------------------------------------------------------------------------


async def test_analytics_js_short_paths(client, page_views, forms):
    names = {"s": "screen", "g": "group", "a": "alias"}
    ignored = {kind: await counted(client, "embudo_ingest_segment_ignored_total", type=names[kind]) for kind in names}
    # The short path implies the type, whatever the message says.
    assert_success(await post(client, "p", {**page("visitor-11"), "type": "whatever"}))
    assert_success(await post(client, "i", identify("cam@example.com")))
    track = {"event": "Form Submitted", "anonymousId": "v", "properties": {"email": "dan@example.com"}}
    assert_success(await post(client, "t", track))
    for kind in names:
        assert_success(await post(client, kind, {"userId": "u1", "groupId": "g1", "previousId": "p1"}))
    assert_success(await post(client, "b", {"batch": [page("visitor-12")]}))

    views = events_of(await page_views.read_until(lambda r: len(r) >= 2))
    assert sorted(e.data.anonymous_id for e in views) == ["visitor-11", "visitor-12"]
    submissions = events_of(await forms.read_until(lambda r: len(r) >= 2))
    assert sorted((e.data.email, e.data.form_id) for e in submissions) == [
        ("cam@example.com", "segment-identify"),
        ("dan@example.com", "Form Submitted"),
    ]
    for kind, name in names.items():
        assert await counted(client, "embudo_ingest_segment_ignored_total", type=name) == ignored[kind] + 1


@pytest.mark.parametrize("path", ["batch", "identify", "track", "page", "screen", "group", "alias"])
async def test_the_long_paths_answer_200(client, path):
    body = {"batch": []} if path == "batch" else {"userId": "u1", "event": "Clicked"}
    assert_success(await post(client, path, body))


async def test_the_batchs_sent_at_corrects_every_messages_clock(client, page_views):
    # The client's clock is years behind; its message was stamped 10 s before sending.
    body = {"batch": [page("visitor-13", timestamp="2001-05-01T11:59:50Z")], "sentAt": "2001-05-01T12:00:00Z"}
    before = utcnow()
    assert_success(await post(client, "batch", body))
    after = utcnow()
    [event] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    # Received between `before` and `after`, so it happened 10 s before some moment in there.
    assert before - timedelta(seconds=10) <= event.occurred_at <= after - timedelta(seconds=10)


async def test_an_unknown_message_path_is_404(client):
    assert_refused(await post(client, "purchase", {"userId": "u1"}), 404, "not_found")
