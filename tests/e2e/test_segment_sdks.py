"""Real Segment and RudderStack SDKs (segment-analytics-python, rudder-sdk-python, as
published: nobody here wrote them) against ingest running as a process on the real broker.

The SDKs are synchronous HTTP clients, so they run in threads; what ingest answered them is
read from their own HTTP sessions (a response hook), not from a stand-in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import rudderstack.analytics.request as rudder_request
import segment.analytics.request as segment_request
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from services.leads.main import build_app as build_leads
from services.leads.settings import LeadsSettings
from shared.events import Envelope, FormSubmission, PageView
from shared.topics import FORM_SUBMISSIONS, PAGE_VIEWS, ensure_topics
from tests.e2e.stack import WRITE_KEY, Stack
from tests.integration.test_ingest import create_visible_topics
from tests.integration.test_ingest_segment import counted
from tests.support import TopicReader, eventually, serve

pytestmark = pytest.mark.e2e


@pytest.fixture
async def ingest(topics: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Stack]:
    await create_visible_topics(topics, topic_prefix)
    stack = Stack(topics, {}, topic_prefix, tmp_path / "logs")
    await asyncio.to_thread(stack.start, "ingest")
    try:
        yield stack
    finally:
        await asyncio.to_thread(stack.stop_all)


@pytest.fixture
async def forms(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + FORM_SUBMISSIONS.name)


@pytest.fixture
async def page_views(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + PAGE_VIEWS.name)


@contextmanager
def statuses_seen(module) -> Iterator[list[int]]:
    """Every status an SDK's HTTP session received while inside the block."""
    seen: list[int] = []

    def record(response, *args, **kwargs):
        if "/segment/v1/" in response.url:
            seen.append(response.status_code)

    hooks = module._session.hooks["response"]
    hooks.append(record)
    try:
        yield seen
    finally:
        hooks.remove(record)


def host(stack: Stack) -> str:
    return f"{stack.url('ingest')}/segment"  # the SDKs append /v1/batch


def events_of(records) -> list[Envelope]:
    return [Envelope.from_bytes(record.value) for record in records]


# --- segment-analytics-python -------------------------------------------------------------


async def test_segment_sync_mode_identify_track_and_page_arrive_as_their_events(ingest, forms, page_views):
    client = SegmentClient(WRITE_KEY, host=host(ingest), sync_mode=True)

    def send() -> list[dict]:
        # Sync mode posts each call at once and raises on anything but 2xx.
        calls = [
            client.identify(
                user_id="user-1",
                anonymous_id="visitor-s1",
                traits={"email": "Ana.Lopez@Example.com", "name": "Ana López", "company": "Acme", "plan": "pro"},
                context={"campaign": {"name": "spring", "source": "google", "medium": "cpc"}},
            ),
            client.track(
                anonymous_id="visitor-s1",
                event="Form Submitted",
                properties={"email": "bea@example.com", "form_id": "demo-request", "budget": "10k"},
            ),
            client.page(
                anonymous_id="visitor-s1",
                name="Pricing",
                properties={"url": "https://www.example.com/pricing?utm_campaign=spring&ref=x", "title": "Pricing"},
                context={"page": {"referrer": "https://www.google.com/search?q=crm"}},
            ),
            client.track(user_id="user-1", event="Clicked Button"),  # accepted, ignored
            client.screen(user_id="user-1", name="Home"),
            client.group(user_id="user-1", group_id="acme"),
            client.alias(previous_id="visitor-s1", user_id="user-1"),
        ]
        return [message for _, message in calls]

    with statuses_seen(segment_request) as seen:
        identify, track, page, *_ = await asyncio.to_thread(send)
    assert seen == [200] * 7

    records = await forms.read_until(lambda r: len(r) >= 2)
    submissions = {Envelope.from_bytes(r.value).data.email: (r, Envelope.from_bytes(r.value)) for r in records}
    record, event = submissions["Ana.Lopez@Example.com"]
    assert record.key == b"ana.lopez@example.com"
    assert str(event.event_id) == identify["messageId"]
    assert isinstance(event.data, FormSubmission)
    assert (event.data.form_id, event.data.name, event.data.company) == ("segment-identify", "Ana López", "Acme")
    assert event.data.anonymous_id == "visitor-s1" and event.data.fields == {"plan": "pro"}
    assert (event.data.utm.campaign, event.data.utm.medium) == ("spring", "cpc")
    record, event = submissions["bea@example.com"]
    assert record.key == b"bea@example.com" and str(event.event_id) == track["messageId"]
    assert (event.data.form_id, event.data.fields) == ("demo-request", {"budget": "10k"})

    [record] = await page_views.read_until(lambda r: len(r) >= 1)
    assert record.key == b"visitor-s1"
    view = Envelope.from_bytes(record.value)
    assert str(view.event_id) == page["messageId"]
    assert isinstance(view.data, PageView)
    assert view.data.url == "https://www.example.com/pricing?utm_campaign=spring"
    assert (view.data.referrer, view.data.title) == ("https://www.google.com/search", "Pricing")
    assert view.data.utm.campaign == "spring"
    assert len(await forms.quiet(1)) == 2 and len(page_views.records) == 1  # the rest was ignored


async def test_segment_background_queue_delivers_a_batch_whose_unmappable_message_is_skipped_and_counted(
    ingest, forms, page_views
):
    errors: list = []
    client = SegmentClient(
        WRITE_KEY, host=host(ingest), on_error=lambda error, batch: errors.append(error), upload_interval=0.2
    )

    def send() -> None:
        client.page(anonymous_id="visitor-q1", properties={"url": "https://www.example.com/a"})
        client.page(anonymous_id="visitor-q1", name="No url")  # nothing to make a page view of
        client.identify(anonymous_id="visitor-q1", traits={"email": "cy@example.com"})
        client.identify(user_id="user-9", traits={"email": "not-an-email"})  # the native rules refuse it
        client.page(anonymous_id="visitor-q1", properties={"url": "https://www.example.com/b"})
        client.flush()  # one batch (upload_size 100): every message in one request
        client.shutdown()

    with statuses_seen(segment_request) as seen:
        await asyncio.to_thread(send)
    assert errors == [] and seen and set(seen) == {200}

    views = events_of(await page_views.read_until(lambda r: len(r) >= 2))
    assert sorted(v.data.url for v in views) == ["https://www.example.com/a", "https://www.example.com/b"]
    [submission] = events_of(await forms.read_until(lambda r: len(r) >= 1))
    assert submission.data.email == "cy@example.com" and submission.data.anonymous_id == "visitor-q1"
    async with httpx.AsyncClient(base_url=ingest.url("ingest")) as http:  # a process of the test's own
        skipped = "embudo_ingest_segment_skipped_total"
        assert await counted(http, skipped, type="page", reason="unmapped") == 1
        assert await counted(http, skipped, type="identify", reason="invalid") == 1
    assert len(await page_views.quiet(1)) == 2 and len(forms.records) == 1


async def test_a_resend_is_the_same_event_id_on_the_topic_and_counted_once_by_leads(
    ingest, forms, make_settings, topics, topic_prefix
):
    await ensure_topics(topics, prefix=topic_prefix)
    leads_app = build_leads(await make_settings(LeadsSettings))
    client = SegmentClient(WRITE_KEY, host=host(ingest), sync_mode=True)
    message_id = str(uuid.uuid4())

    def send() -> None:
        traits = {"email": "dee@example.com", "name": "Dee"}
        for _ in range(2):  # an SDK resending a batch whose answer it never saw
            client.identify(anonymous_id="visitor-r1", traits=traits, message_id=message_id)
        # A later submission of the same person: same key, same partition, behind both copies.
        client.track(anonymous_id="visitor-r1", event="Signed Up", properties={"email": "dee@example.com"})

    async with serve(leads_app) as leads:
        leads.headers["Authorization"] = "Bearer test-token"
        await asyncio.to_thread(send)
        records = await forms.read_until(lambda r: len(r) >= 3)
        assert [str(e.event_id) for e in events_of(records[:2])] == [message_id, message_id]

        async def lead() -> dict | None:
            items = (await leads.get("/v1/leads", params={"email": "dee@example.com"})).json()["items"]
            return items[0] if items and items[0]["touch_count"] >= 2 else None

        found = await eventually(lead)
        # The marker behind the copies is counted, so both copies were read: once between them.
        assert found["touch_count"] == 2
        detail = (await leads.get(f"/v1/leads/{found['lead_id']}")).json()
        assert [t["form_id"] for t in detail["touches"]] == ["segment-identify", "Signed Up"]


# --- rudder-sdk-python --------------------------------------------------------------------


async def test_rudderstack_gzips_by_default_and_takes_only_the_exact_200(ingest, forms, page_views):
    client = RudderClient(WRITE_KEY, host=host(ingest), sync_mode=True)
    assert client.gzip  # its default: every body below is gzip-compressed

    def send() -> list[dict]:
        calls = [
            client.identify(anonymous_id="visitor-r2", traits={"email": "eve@example.com", "phone": "+34 600"}),
            client.page(
                anonymous_id="visitor-r2",
                name="Home",
                properties={"url": "https://www.example.com/"},
                context={"campaign": {"name": "autumn", "medium": "email"}},
            ),
            client.track(anonymous_id="visitor-r2", event="Signed Up", properties={"email": "fay@example.com"}),
        ]
        return [message for _, message in calls]

    with statuses_seen(rudder_request) as seen:
        # rudder-sdk-python raises on any status but 200 (202 included).
        identify, page, track = await asyncio.to_thread(send)
    assert seen == [200, 200, 200]

    submissions = {e.data.email: e for e in events_of(await forms.read_until(lambda r: len(r) >= 2))}
    assert str(submissions["eve@example.com"].event_id) == identify["messageId"]
    assert submissions["eve@example.com"].data.phone == "+34 600"
    assert submissions["fay@example.com"].data.form_id == "Signed Up"
    [view] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    assert str(view.event_id) == page["messageId"] and view.key == "visitor-r2"
    assert (view.data.utm.campaign, view.data.utm.medium) == ("autumn", "email")


# --- the broker away ----------------------------------------------------------------------


async def test_broker_down_the_sdks_retry_on_503_and_their_events_arrive_afterwards(private_broker, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await ensure_topics(private_broker.bootstrap, prefix=prefix)
    env = {"EMBUDO_KAFKA_SEND_TIMEOUT_SECONDS": "2", "EMBUDO_UNAVAILABLE_RETRY_AFTER_SECONDS": "1"}
    stack = Stack(private_broker.bootstrap, {}, prefix, tmp_path / "logs", extra_env=env)
    await asyncio.to_thread(stack.start, "ingest")
    reader = TopicReader(private_broker.bootstrap, prefix + FORM_SUBMISSIONS.name)
    await reader.open()
    errors: list = []
    segment = SegmentClient(
        WRITE_KEY, host=host(stack), on_error=lambda e, batch: errors.append(e), upload_interval=0.2
    )
    rudder = RudderClient(WRITE_KEY, host=host(stack), on_error=lambda e, batch: errors.append(e), upload_interval=0.2)
    try:
        await asyncio.to_thread(private_broker.stop)
        with statuses_seen(segment_request) as segment_seen, statuses_seen(rudder_request) as rudder_seen:
            _, from_segment = segment.identify(anonymous_id="visitor-d1", traits={"email": "gus@example.com"})
            _, from_rudder = rudder.identify(anonymous_id="visitor-d2", traits={"email": "hal@example.com"})

            async def both_refused() -> bool:
                return 503 in segment_seen and 503 in rudder_seen

            await eventually(both_refused, timeout=60, interval=0.2)
            await asyncio.to_thread(private_broker.start)
            # flush() returns once the queue is empty: after the retries got their 200.
            await asyncio.to_thread(segment.flush)
            await asyncio.to_thread(rudder.flush)
        assert errors == []
        assert segment_seen[-1] == 200 and rudder_seen[-1] == 200
        wanted = {from_segment["messageId"], from_rudder["messageId"]}
        records = await reader.read_until(lambda r: wanted <= {str(e.event_id) for e in events_of(r)}, timeout=60)
        # A refused attempt may still have landed once the broker was back: the same event_id,
        # which the consumers recognise, so each message is one event downstream.
        assert {str(e.event_id) for e in events_of(records)} == wanted
    finally:
        segment.join()
        rudder.join()
        await reader.close()
        await asyncio.to_thread(stack.stop_all)
