"""The leads service against the real broker and database: submissions and page views in,
lead events out."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.leads import store
from services.leads.main import build_app
from services.leads.service import TOUCHES_SHOWN, change_stage, record_page_view, record_submission
from services.leads.settings import LeadsSettings, load_scoring_rules
from shared.events import DealRejected, Envelope, FormSubmission, PageView, Utm
from shared.kafka import EventProducer
from shared.pagination import encode_cursor
from shared.topics import DEAL_EVENTS, FORM_SUBMISSIONS, LEAD_EVENTS, PAGE_VIEWS, ensure_topics
from shared.uow import unit_of_work
from tests.support import eventually, serve

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SCORING = """
forms: {points: {demo-request: 30, newsletter: 5}, other: 10}
profile: {name: 5, company: 10}
repeat_touches: {each: 5, max: 10}
"""


@dataclass
class Leads:
    app: FastAPI
    client: httpx.AsyncClient

    async def lead_by_email(self, email: str) -> dict | None:
        response = await self.client.get("/v1/leads", params={"email": email})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        return items[0] if items else None

    async def detail(self, lead_id: str) -> dict:
        response = await self.client.get(f"/v1/leads/{lead_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_for(self, email: str, touches: int = 1) -> dict:
        async def seen() -> dict | None:
            lead = await self.lead_by_email(email)
            return lead if lead and lead["touch_count"] >= touches else None

        return await eventually(seen)

    async def move(self, lead_id: str, stage: str, **body) -> httpx.Response:
        return await self.client.post(f"/v1/leads/{lead_id}/stage", json={"stage": stage, **body})


@pytest.fixture
def scoring_file(tmp_path: Path) -> Path:
    path = tmp_path / "scoring.yaml"
    path.write_text(SCORING)
    return path


@pytest.fixture
async def start_leads(make_settings, topics: str, topic_prefix: str, scoring_file: Path):
    """Starts the leads service (migrations, consumer, outbox relay) in this test's namespace."""
    stack = AsyncExitStack()
    # The topics exist before anyone reads them (readers only see partitions that exist).
    await ensure_topics(topics, prefix=topic_prefix)

    async def start(**overrides) -> Leads:
        settings = await make_settings(LeadsSettings, scoring_config=scoring_file, **overrides)
        app = build_app(settings)
        client = await stack.enter_async_context(serve(app))
        client.headers["Authorization"] = "Bearer test-token"
        return Leads(app, client)

    yield start
    await stack.aclose()


@pytest.fixture
async def leads(start_leads) -> Leads:
    return await start_leads()


@pytest.fixture
async def producer(topics: str, topic_prefix: str) -> AsyncIterator[EventProducer]:
    p = EventProducer(topics, client_id="test-leads", send_timeout=10, topic_prefix=topic_prefix)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def lead_events(topic_reader, topic_prefix: str):
    return await topic_reader(topic_prefix + LEAD_EVENTS.name)


def submission(
    email: str,
    minutes: int = 0,
    *,
    form_id: str = "newsletter",
    campaign: str | None = None,
    medium: str | None = None,
    **profile,
) -> Envelope:
    data = FormSubmission(
        form_id=form_id, email=email, utm=Utm(source="test", medium=medium, campaign=campaign), **profile
    )
    return Envelope.wrap(data, source="test", key=email.strip().lower(), occurred_at=T0 + timedelta(minutes=minutes))


async def publish(producer: EventProducer, *events: Envelope) -> None:
    await producer.publish_many(FORM_SUBMISSIONS, list(events))


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


# --- from submissions to leads -------------------------------------------------------------


async def test_first_submission_creates_a_lead_and_publishes_lead_created(leads, producer, lead_events):
    sent = submission(
        "Ana@Example.com",
        form_id="demo-request",
        campaign="spring",
        medium="cpc",
        name="Ana",
        company="Acme",
        fields={"job_title": "CTO"},
    )
    await publish(producer, sent)

    [created] = await lead_events.events(1)
    lead = await leads.wait_for("ana@example.com")
    assert created.type == "lead.created"
    assert created.key == lead["lead_id"] == str(created.data.lead_id)
    assert created.source == "leads"
    assert created.data.email == "ana@example.com"
    assert created.data.stage == "lead"
    assert created.data.created_at == sent.occurred_at
    assert created.data.score == 30 + 5 + 10
    touch = created.data.attribution.first_touch
    assert (touch.campaign_id, touch.channel, touch.form_id) == ("spring", "cpc", "demo-request")
    assert created.data.attribution.last_touch == touch

    detail = await leads.detail(lead["lead_id"])
    assert detail["email"] == "ana@example.com"
    assert detail["profile"] == {
        "name": "Ana",
        "company": "Acme",
        "phone": None,
        "fields": {"job_title": "CTO"},
    }
    assert detail["score"] == 45
    assert detail["stage"] == "lead"
    assert parse(detail["created_at"]) == sent.occurred_at
    assert detail["first_touch"]["campaign_id"] == "spring"
    assert len(detail["touches"]) == 1
    [creation] = detail["stage_history"]
    assert (creation["from"], creation["to"]) == (None, "lead")
    assert parse(creation["occurred_at"]) == sent.occurred_at


async def test_case_and_whitespace_variants_are_one_lead(leads, producer, lead_events):
    variants = ["Bo@Example.com", "  bo@example.COM ", "BO@EXAMPLE.COM"]
    await publish(producer, *(submission(email, minutes=i) for i, email in enumerate(variants)))

    events = await lead_events.events(3)
    lead = await leads.wait_for("bo@example.com", touches=3)
    assert [e.type for e in events] == ["lead.created", "lead.touched", "lead.touched"]
    assert {str(e.data.lead_id) for e in events} == {lead["lead_id"]}
    assert {e.data.email for e in events} == {"bo@example.com"}
    # the email filter matches the normalised form, whatever the query's case and spaces
    same = await leads.lead_by_email("  BO@example.com")
    assert same["lead_id"] == lead["lead_id"]
    listing = (await leads.client.get("/v1/leads")).json()["items"]
    assert len(listing) == 1


async def test_a_duplicate_event_id_changes_nothing(leads, producer, lead_events):
    first = submission("cy@example.com", 0, name="Cy")
    await publish(producer, first, first)  # an ingest retry: the same event twice
    await lead_events.events(1)
    await publish(producer, first)  # and once more, after it was applied
    # A later submission of the same person (same key, so same partition, behind the copies)
    marker = submission("cy@example.com", 5)
    await publish(producer, marker)

    lead = await leads.wait_for("cy@example.com", touches=2)
    events = await lead_events.events(2)
    extra = await lead_events.quiet(1.5)
    assert [e.type for e in events] == ["lead.created", "lead.touched"]
    assert len(extra) == 2  # no event for any copy
    assert events[1].data.touch.occurred_at == marker.occurred_at
    detail = await leads.detail(lead["lead_id"])
    assert detail["touch_count"] == 2 and len(detail["touches"]) == 2
    assert detail["score"] == 5 + 5 + 5  # newsletter, name, one repeat touch: the copies add nothing
    async with leads.app.state.pool.acquire() as conn:
        copies = "SELECT count(*) FROM processed_events WHERE event_id = $1"
        assert await conn.fetchval(copies, first.event_id) == 1


async def test_an_older_submission_arriving_late_moves_created_at_and_the_first_touch_back(
    leads, producer, lead_events
):
    newer = submission("di@example.com", 60, campaign="retargeting", medium="social", name="Di New")
    older = submission("di@example.com", 0, campaign="launch", medium="email", name="Di Old", company="Acme")
    await publish(producer, newer)
    [created] = await lead_events.events(1)
    assert created.data.created_at == newer.occurred_at
    await publish(producer, older)

    [_, touched] = await lead_events.events(2)
    assert touched.type == "lead.touched"
    assert touched.data.created_at == older.occurred_at
    assert touched.data.touch.campaign_id == "launch"
    assert touched.data.attribution.first_touch.campaign_id == "launch"
    assert touched.data.attribution.last_touch.campaign_id == "retargeting"

    lead = await leads.wait_for("di@example.com", touches=2)
    detail = await leads.detail(lead["lead_id"])
    assert parse(detail["created_at"]) == older.occurred_at
    assert detail["first_touch"]["channel"] == "email"
    assert detail["last_touch"]["channel"] == "social"
    assert [t["campaign_id"] for t in detail["touches"]] == ["launch", "retargeting"]
    # the newest answer wins; an older one only fills what is missing
    assert detail["profile"]["name"] == "Di New"
    assert detail["profile"]["company"] == "Acme"
    assert parse(detail["stage_history"][0]["occurred_at"]) == older.occurred_at


async def test_the_detail_shows_the_newest_touches_and_counts_them_all(leads, producer):
    many = [submission("fa@example.com", minute, campaign=f"c{minute}") for minute in range(TOUCHES_SHOWN + 5)]
    await publish(producer, *reversed(many))  # newest first: every later one is an older touch
    lead = await leads.wait_for("fa@example.com", touches=len(many))
    detail = await leads.detail(lead["lead_id"])
    assert detail["touch_count"] == len(many)
    assert [t["campaign_id"] for t in detail["touches"]] == [f"c{minute}" for minute in range(5, len(many))]
    assert (detail["first_touch"]["campaign_id"], detail["last_touch"]["campaign_id"]) == ("c0", f"c{len(many) - 1}")
    assert parse(detail["created_at"]) == many[0].occurred_at

    # The whole history, page by page, oldest first.
    pages, cursor = [], None
    while True:
        params = {"limit": 40} | ({"cursor": cursor} if cursor else {})
        response = await leads.client.get(f"/v1/leads/{lead['lead_id']}/touches", params=params)
        assert response.status_code == 200, response.text
        pages.append([t["campaign_id"] for t in response.json()["items"]])
        if not (cursor := response.json()["next_cursor"]):
            break
    assert [len(page) for page in pages] == [40, 40, len(many) - 80]
    assert sum(pages, []) == [f"c{minute}" for minute in range(len(many))]


async def test_first_and_last_touch_and_the_campaign_and_channel_filters(leads, producer, lead_events):
    await publish(
        producer,
        submission("ed@example.com", 0, campaign="c-first", medium="email"),
        submission("ed@example.com", 10, campaign="c-middle", medium="cpc"),
        submission("ed@example.com", 20, campaign="c-last", medium="social"),
        submission("fa@example.com", 0),  # no utm campaign or medium: unattributed
    )
    ed = await leads.wait_for("ed@example.com", touches=3)
    fa = await leads.wait_for("fa@example.com")
    assert ed["first_touch"]["campaign_id"] == "c-first" and ed["last_touch"]["campaign_id"] == "c-last"
    assert fa["first_touch"]["campaign_id"] is None and fa["first_touch"]["channel"] is None

    async def ids(**params) -> list[str]:
        response = await leads.client.get("/v1/leads", params=params)
        assert response.status_code == 200, response.text
        return [item["lead_id"] for item in response.json()["items"]]

    assert await ids(campaign_id="c-first") == [ed["lead_id"]]
    assert await ids(campaign_id="c-last") == [ed["lead_id"]]
    assert await ids(campaign_id="c-middle") == []  # neither first nor last touch
    assert await ids(campaign_id="c-first", touch="first") == [ed["lead_id"]]
    assert await ids(campaign_id="c-first", touch="last") == []
    assert await ids(channel="social", touch="last") == [ed["lead_id"]]
    assert await ids(channel="social", touch="first") == []
    assert await ids(channel="email", campaign_id="c-last") == [ed["lead_id"]]


# --- lifecycle through the API ---------------------------------------------------------------

REFUSED_FROM = {
    "lead": ["lead"],
    "mql": ["lead", "mql"],
    "sql": ["lead", "mql", "sql", "disqualified"],
    "disqualified": ["mql", "sql", "disqualified"],
}


async def test_every_allowed_move_succeeds_and_every_refused_one_is_409(leads, producer, lead_events):
    await publish(producer, submission("gu@example.com", 0), submission("ha@example.com", 0))
    gu = (await leads.wait_for("gu@example.com"))["lead_id"]
    ha = (await leads.wait_for("ha@example.com"))["lead_id"]
    await lead_events.events(2)

    async def refused_everywhere_from(lead_id: str, stage: str) -> None:
        for target in REFUSED_FROM[stage]:
            response = await leads.move(lead_id, target)
            assert response.status_code == 409, (stage, target, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["stage"] == stage

    paths = {
        gu: ["mql", "sql"],
        ha: ["disqualified", "lead", "mql", "disqualified", "lead", "sql"],
    }
    expected_events = []
    for lead_id, path in paths.items():
        current = "lead"
        await refused_everywhere_from(lead_id, current)
        for target in path:
            response = await leads.move(lead_id, target, reason=f"to {target}")
            assert response.status_code == 200, response.text
            assert response.json()["stage"] == target
            expected_events.append((lead_id, current, target))
            current = target
            await refused_everywhere_from(lead_id, current)

    events = await lead_events.events(2 + len(expected_events))
    extra = await lead_events.quiet(1.5)
    assert len(extra) == 2 + len(expected_events)  # no event for any refused move
    changes = [e for e in events if e.type == "lead.stage_changed"]
    # one lead's events keep their order (one key, one partition); two leads may interleave
    for lead_id in paths:
        assert [(e.data.from_stage, e.data.to_stage) for e in changes if str(e.data.lead_id) == lead_id] == [
            (frm, to) for lid, frm, to in expected_events if lid == lead_id
        ]
    assert all(e.key == str(e.data.lead_id) for e in changes)
    assert all(e.data.reason == f"to {e.data.to_stage}" for e in changes)
    raw = changes[0].to_bytes().decode()
    assert '"from":"lead"' in raw and '"to":"mql"' in raw  # field aliases on the wire

    history = (await leads.detail(ha))["stage_history"]
    assert [(h["from"], h["to"]) for h in history] == [(None, "lead")] + [
        (frm, to) for lead_id, frm, to in expected_events if lead_id == ha
    ]
    times = [parse(h["occurred_at"]) for h in history]
    assert times == sorted(times)


async def test_a_stage_change_with_an_explicit_time_is_kept_and_published(leads, producer, lead_events):
    await publish(producer, submission("ia@example.com", 0))
    lead_id = (await leads.wait_for("ia@example.com"))["lead_id"]
    when = T0 + timedelta(days=2)
    response = await leads.move(lead_id, "mql", reason="webinar", occurred_at=when.isoformat())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stage_history"][-1]["reason"] == "webinar"
    assert parse(body["stage_history"][-1]["occurred_at"]) == when

    [_, changed] = await lead_events.events(2)
    assert changed.occurred_at == changed.data.occurred_at == when
    assert changed.data.created_at == T0
    assert changed.data.attribution.first_touch.occurred_at == T0

    # not before the last change nor before created_at (409: out of order), not in the future (422)
    for bad, status in (
        (when - timedelta(hours=1), 409),
        (T0 - timedelta(minutes=1), 409),
        (datetime.now(UTC) + timedelta(hours=1), 422),
    ):
        response = await leads.move(lead_id, "sql", occurred_at=bad.isoformat())
        assert response.status_code == status, response.text
        problem = response.json()
        assert (problem["errors"][0]["field"] if status == 422 else problem["field"]) == "occurred_at"
    assert (await leads.detail(lead_id))["stage"] == "mql"


# --- the handoff returned ----------------------------------------------------------------------


def rejection(changed: Envelope, reason: str, at: datetime) -> Envelope:
    """The deal.rejected sales publishes for the deal a lead's move to sql (`changed`) opened."""
    lead = changed.data
    data = DealRejected(
        deal_id=uuid.uuid4(),
        lead_id=lead.lead_id,
        lead_created_at=lead.created_at,
        attribution=lead.attribution,
        reason=reason,
        occurred_at=at,
    )
    return Envelope.wrap(data, source="sales", key=str(lead.lead_id), occurred_at=at)


async def test_a_rejected_handoff_returns_the_lead_to_mql_once_and_only_from_that_handoff(leads, producer, lead_events):
    await publish(producer, submission("ka@example.com", 0))
    lead_id = (await leads.wait_for("ka@example.com"))["lead_id"]
    first_sql = T0 + timedelta(days=1)
    assert (await leads.move(lead_id, "sql", occurred_at=first_sql.isoformat())).status_code == 200
    [_, handed] = await lead_events.events(2)

    rejected = rejection(handed, "no budget this year", first_sql + timedelta(hours=5))
    await producer.publish_many(DEAL_EVENTS, [rejected, rejected])  # and a redelivery

    async def returned():
        detail = await leads.detail(lead_id)
        return detail if detail["stage"] == "mql" else None

    detail = await eventually(returned)
    returned_entry = detail["stage_history"][-1]
    assert (returned_entry["from"], returned_entry["to"], returned_entry["reason"]) == (
        "sql", "mql", "handoff rejected: no budget this year"
    )  # fmt: skip
    assert parse(returned_entry["occurred_at"]) == rejected.data.occurred_at
    [_, _, back] = await lead_events.events(3)
    assert (back.type, back.data.from_stage, back.data.to_stage, back.occurred_at) == (
        "lead.stage_changed", "sql", "mql", rejected.data.occurred_at
    )  # fmt: skip

    # Marketing hands it over again; a copy of the old rejection arriving now is not this
    # handoff's answer: applied (recorded as processed) and the lead stays in sql.
    second_sql = first_sql + timedelta(days=3)
    assert (await leads.move(lead_id, "sql", occurred_at=second_sql.isoformat())).status_code == 200
    late_copy = rejection(handed, "no budget this year", first_sql + timedelta(hours=5))
    await producer.publish_many(DEAL_EVENTS, [late_copy])
    pool = leads.app.state.pool
    sql = "SELECT count(*) FROM processed_events WHERE event_id = $1"
    await eventually(lambda: pool.fetchval(sql, late_copy.event_id))
    detail = await leads.detail(lead_id)
    assert detail["stage"] == "sql"
    assert [(h["from"], h["to"]) for h in detail["stage_history"]] == [
        (None, "lead"), ("lead", "sql"), ("sql", "mql"), ("mql", "sql")
    ]  # fmt: skip
    events = await lead_events.events(4)
    assert len(await lead_events.quiet(1.5)) == len(events) == 4


# --- the outbox ------------------------------------------------------------------------------


async def test_the_outbox_publishes_each_committed_change_once_and_nothing_on_rollback(leads, producer, lead_events):
    await publish(producer, submission("jo@example.com", 0))
    lead_id = (await leads.wait_for("jo@example.com"))["lead_id"]
    await lead_events.events(1)
    pool = leads.app.state.pool

    async def all_sent() -> bool:
        return await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0

    # The relay marks a row sent after Kafka acknowledged it: the consumer can see it first.
    await eventually(all_sent)

    # A stage change whose transaction fails after writing state and outbox row.
    with pytest.raises(RuntimeError):
        async with unit_of_work(pool) as uow:
            lead = await store.lock_lead(uow.conn, uuid.UUID(lead_id))
            await change_stage(uow, lead, "sql", "rolled back", datetime.now(UTC))
            assert await uow.conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
            raise RuntimeError("something after the change failed")
    assert (await leads.detail(lead_id))["stage"] == "lead"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # lead.created only

    response = await leads.move(lead_id, "mql")
    assert response.status_code == 200
    events = await lead_events.events(2)
    extra = await lead_events.quiet(1.5)
    assert len(extra) == 2
    assert [(e.type, e.data.to_stage) for e in events[1:]] == [("lead.stage_changed", "mql")]
    await eventually(all_sent)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


# --- scoring and automatic promotion -----------------------------------------------------


async def test_reaching_the_threshold_promotes_to_mql(start_leads, producer, lead_events):
    leads = await start_leads(mql_threshold=40)
    # newsletter 5 -> then demo-request 30 + name 5 + one repeat touch 5 = 45
    await publish(
        producer,
        submission("ka@example.com", 0),
        submission("ka@example.com", 10, form_id="demo-request", name="Ka"),
    )
    events = await lead_events.events(3)
    assert [e.type for e in events] == ["lead.created", "lead.touched", "lead.stage_changed"]
    assert [e.data.score for e in events[:2]] == [5, 45]
    promoted = events[2].data
    assert (promoted.from_stage, promoted.to_stage, promoted.reason) == ("lead", "mql", "score threshold")
    assert promoted.occurred_at == T0 + timedelta(minutes=10)

    lead = await leads.wait_for("ka@example.com", touches=2)
    assert (lead["stage"], lead["score"]) == ("mql", 45)
    # more points later do not promote again
    await publish(producer, submission("ka@example.com", 20, form_id="pricing"))
    await lead_events.events(4)
    extra = await lead_events.quiet(1.5)
    assert [e.type for e in [Envelope.from_bytes(r.value) for r in extra]][3:] == ["lead.touched"]


async def test_without_a_threshold_no_lead_is_promoted(leads, producer, lead_events):
    assert leads.app.state.settings.mql_threshold is None
    await publish(
        producer,
        submission("lu@example.com", 0),
        submission("lu@example.com", 10, form_id="demo-request", name="Lu", company="Acme"),
    )
    events = await lead_events.events(2)
    extra = await lead_events.quiet(1.5)
    assert len(extra) == 2
    assert events[1].data.score == 5 + 30 + 5 + 10 + 5
    assert (await leads.wait_for("lu@example.com", touches=2))["stage"] == "lead"


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrent_submissions_of_one_new_email_make_one_lead(leads, lead_events):
    rules = load_scoring_rules(leads.app.state.settings.scoring_config)
    pool = leads.app.state.pool

    async def consume(minutes: int) -> uuid.UUID:
        async with unit_of_work(pool) as uow:
            return await record_submission(uow, submission(" Mo@example.com", minutes), rules, None)

    lead_ids = await asyncio.gather(*(consume(m) for m in range(8)))
    assert len(set(lead_ids)) == 1
    events = await lead_events.events(8)
    assert sorted(e.type for e in events) == ["lead.created"] + ["lead.touched"] * 7
    lead = await leads.lead_by_email("mo@example.com")
    assert lead["touch_count"] == 8 and parse(lead["created_at"]) == T0


async def test_concurrent_moves_of_one_lead_let_exactly_one_through(leads, producer, lead_events):
    await publish(producer, submission("ny@example.com", 0))
    lead_id = (await leads.wait_for("ny@example.com"))["lead_id"]
    responses = await asyncio.gather(*(leads.move(lead_id, "mql") for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 5
    events = await lead_events.events(2)
    extra = await lead_events.quiet(1.5)
    assert len(extra) == 2 and events[1].type == "lead.stage_changed"


# --- listing -------------------------------------------------------------------------------


async def test_pagination_walks_every_lead_once_in_created_order(leads, producer):
    emails = [f"p{i}@example.com" for i in range(11)]
    # two pairs share a created_at: the id breaks the tie without gaps or duplicates
    minutes = [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8]
    await publish(producer, *(submission(e, m) for e, m in zip(emails, minutes, strict=True)))

    async def all_there() -> bool:
        return len((await leads.client.get("/v1/leads", params={"limit": 200})).json()["items"]) == 11

    await eventually(all_there)
    seen: list[dict] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = (await leads.client.get("/v1/leads", params=params)).json()
        seen += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 4
    assert sorted(item["email"] for item in seen) == sorted(emails)
    keys = [(parse(item["created_at"]), item["lead_id"]) for item in seen]
    assert keys == sorted(keys) and len(set(keys)) == 11

    # created_from is inclusive, created_to exclusive; filters combine with the cursor
    window = {
        "created_from": (T0 + timedelta(minutes=1)).isoformat(),
        "created_to": (T0 + timedelta(minutes=4)).isoformat(),
        "limit": 2,
    }
    first = (await leads.client.get("/v1/leads", params=window)).json()
    rest = (await leads.client.get("/v1/leads", params=window | {"cursor": first["next_cursor"]})).json()
    assert rest["next_cursor"] is None
    assert sorted(i["email"] for i in first["items"] + rest["items"]) == [
        "p1@example.com",
        "p2@example.com",
        "p3@example.com",
        "p4@example.com",
    ]
    # a range that ends before it starts holds nothing
    reversed_window = {"created_from": window["created_to"], "created_to": window["created_from"]}
    assert (await leads.client.get("/v1/leads", params=reversed_window)).json() == {"items": [], "next_cursor": None}


async def test_stage_filter(leads, producer):
    await publish(producer, submission("qa@example.com"), submission("qb@example.com"))
    qa = (await leads.wait_for("qa@example.com"))["lead_id"]
    await leads.wait_for("qb@example.com")
    assert (await leads.move(qa, "disqualified", reason="competitor")).status_code == 200
    body = (await leads.client.get("/v1/leads", params={"stage": "disqualified"})).json()
    assert [i["lead_id"] for i in body["items"]] == [qa]
    assert len((await leads.client.get("/v1/leads", params={"stage": "lead"})).json()["items"]) == 1


# --- auth and bad input ----------------------------------------------------------------------


async def test_the_api_needs_a_valid_token(leads):
    lead_path = f"/v1/leads/{uuid.uuid4()}"
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        for method, path in (
            ("GET", "/v1/leads"),
            ("GET", lead_path),
            ("GET", f"{lead_path}/touches"),
            ("POST", f"{lead_path}/stage"),
        ):
            response = await leads.client.request(method, path, headers=headers, json={"stage": "mql"})
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "method, path, body, status, field",
    [
        ("GET", "/v1/leads/not-a-uuid", None, 422, "lead_id"),
        ("POST", "/v1/leads/not-a-uuid/stage", {"stage": "mql"}, 422, "lead_id"),
        ("GET", "/v1/leads/{unknown}", None, 404, None),
        ("GET", "/v1/leads/{unknown}/touches", None, 404, None),
        ("GET", "/v1/leads/{lead}/touches?limit=501", None, 422, "limit"),
        ("GET", "/v1/leads/{lead}/touches?cursor=bm9wZQ", None, 422, "cursor"),
        ("POST", "/v1/leads/{unknown}/stage", {"stage": "mql"}, 404, None),
        ("POST", "/v1/leads/{lead}/stage", {"stage": "customer"}, 422, "stage"),
        ("POST", "/v1/leads/{lead}/stage", {}, 422, "stage"),
        ("POST", "/v1/leads/{lead}/stage", {"stage": "mql", "stgae": "x"}, 422, "stgae"),
        ("POST", "/v1/leads/{lead}/stage", {"stage": "mql", "occurred_at": "2025-03-02T10:00:00"}, 422, "occurred_at"),
        ("POST", "/v1/leads/{lead}/stage", {"stage": "mql", "occurred_at": "yesterday"}, 422, "occurred_at"),
        ("POST", "/v1/leads/{lead}/stage", {"stage": "mql", "reason": "x" * 501}, 422, "reason"),
        ("POST", "/v1/leads/{lead}/stage", {"stage": "mql", "reason": "x\x00"}, 422, "reason"),
        ("POST", "/v1/leads/{lead}/stage", "{not json", 400, None),
        ("GET", "/v1/leads?limit=0", None, 422, "limit"),
        ("GET", "/v1/leads?limit=201", None, 422, "limit"),
        ("GET", "/v1/leads?stage=customer", None, 422, "stage"),
        ("GET", "/v1/leads?cursor=bm9wZQ", None, 422, "cursor"),
        # Well-formed base64 JSON whose id is a number, not a string.
        ("GET", "/v1/leads?cursor=WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgNV0=", None, 422, "cursor"),
        ("GET", "/v1/leads?created_from=2025-03-01", None, 422, "created_from"),
        ("GET", "/v1/leads?touch=middle", None, 422, "touch"),
        ("GET", "/v1/leads?email=ra%00@example.com", None, 422, "email"),  # Postgres refuses NUL
        ("GET", "/v1/leads?campaign_id=spring%00", None, 422, "campaign_id"),
        # Moments with no UTC equivalent in Python (year 0, year 10000): they failed converting.
        (
            "POST",
            "/v1/leads/{lead}/stage",
            {"stage": "mql", "occurred_at": "0001-01-01T00:00:00+14:00"},
            422,
            "occurred_at",
        ),
        ("GET", "/v1/leads?created_from=0001-01-01T00:00:00%2B14:00", None, 422, "created_from"),
        ("GET", "/v1/leads?created_to=9999-12-31T23:59:59-14:00", None, 422, "created_to"),
    ],
)
async def test_bad_requests_get_a_clear_problem(leads, producer, method, path, body, status, field):
    await publish(producer, submission("ra@example.com"))
    lead_id = (await leads.wait_for("ra@example.com"))["lead_id"]
    path = path.format(lead=lead_id, unknown=uuid.uuid4())
    if isinstance(body, str):
        response = await leads.client.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = await leads.client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    if field:
        assert field in [e["field"] for e in problem["errors"]]
    assert (await leads.detail(lead_id))["stage"] == "lead"


async def test_any_cursor_of_the_right_shape_is_a_position(leads, producer):
    # Cursors are opaque but every 48-hex-digit string is a keyset position: the first
    # possible one pages from the start, one past the last representable moment is an
    # empty last page (never a 422 for a schema-valid value, never a 500).
    await publish(producer, submission("cu@example.com"))
    lead_id = (await leads.wait_for("cu@example.com"))["lead_id"]
    for path in ("/v1/leads", f"/v1/leads/{lead_id}/touches"):
        first = (await leads.client.get(path, params={"cursor": "0" * 48})).json()
        assert first["items"] and first["next_cursor"] is None
        past = await leads.client.get(path, params={"cursor": "f" * 48})
        assert past.status_code == 200 and past.json() == {"items": [], "next_cursor": None}
        short = await leads.client.get(path, params={"cursor": "f" * 47})
        assert short.status_code == 422 and short.json()["errors"][0]["field"] == "cursor"
    position = encode_cursor(parse(first["items"][0]["occurred_at"]), uuid.UUID(int=0))
    assert (await leads.client.get(path, params={"cursor": position})).json()["items"] == first["items"]


# --- visitors: page views of a visitor linked to a lead (by a submission carrying its
# anonymous id) are touches of the lead ----------------------------------------------------


def page_view(
    anonymous_id: str,
    minutes: int = 0,
    *,
    campaign: str | None = None,
    medium: str | None = None,
    url: str = "https://shop.example/",
) -> Envelope:
    utm = Utm(source="test" if campaign or medium else None, medium=medium, campaign=campaign)
    data = PageView(anonymous_id=anonymous_id, url=url, title="Shop", utm=utm)
    return Envelope.wrap(data, source="test", key=anonymous_id, occurred_at=T0 + timedelta(minutes=minutes))


async def publish_views(producer: EventProducer, *events: Envelope) -> None:
    await producer.publish_many(PAGE_VIEWS, list(events))


async def stored_visits(leads: Leads, count: int) -> None:
    """Wait until `count` visits are stored: a page view has been applied before what follows."""

    async def there() -> bool:
        return await leads.app.state.pool.fetchval("SELECT count(*) FROM visits") >= count

    await eventually(there)


def campaigns(touches: list[dict]) -> list[tuple[str, str | None]]:
    return [(t["kind"], t["campaign_id"]) for t in touches]


async def test_a_campaign_visit_before_the_form_is_the_leads_first_touch(leads, producer, lead_events):
    visit = page_view("v-1", -60, campaign="launch", medium="email", url="https://shop.example/?utm_campaign=launch")
    await publish_views(producer, visit)
    await stored_visits(leads, 1)
    form = submission("ana@example.com", 0, form_id="demo-request", campaign="spring", anonymous_id="v-1")
    await publish(producer, form)

    [created] = await lead_events.events(1)
    assert created.type == "lead.created"
    assert created.data.anonymous_ids == ["v-1"]
    assert created.data.created_at == form.occurred_at  # the form created the lead
    first = created.data.attribution.first_touch
    assert (first.kind, first.campaign_id, first.channel, first.form_id) == ("page_view", "launch", "email", None)
    assert first.occurred_at == visit.occurred_at
    assert first.page_url == "https://shop.example/?utm_campaign=launch"
    assert created.data.attribution.last_touch.kind == "form_submission"
    assert created.data.score == 30 + 5  # the demo form and one repeat touch

    lead = await leads.wait_for("ana@example.com", touches=2)
    detail = await leads.detail(lead["lead_id"])
    assert detail["anonymous_ids"] == ["v-1"]
    assert parse(detail["created_at"]) == form.occurred_at
    assert parse(detail["stage_history"][0]["occurred_at"]) == form.occurred_at
    assert detail["first_touch"]["kind"] == "page_view" and detail["last_touch"]["kind"] == "form_submission"
    assert campaigns(detail["touches"]) == [("page_view", "launch"), ("form_submission", "spring")]
    page = (await leads.client.get(f"/v1/leads/{lead['lead_id']}/touches")).json()
    assert campaigns(page["items"]) == campaigns(detail["touches"])
    # created_at stays the form's: the lead list and its filters go by it
    listed = (await leads.client.get("/v1/leads", params={"created_from": form.occurred_at.isoformat()})).json()
    assert [item["lead_id"] for item in listed["items"]] == [lead["lead_id"]]


async def test_campaign_visits_after_the_form_touch_the_lead(leads, producer, lead_events):
    form = submission("bo@example.com", 0, campaign="spring", anonymous_id="v-2")
    await publish(producer, form)
    [created] = await lead_events.events(1)
    assert created.data.anonymous_ids == ["v-2"]
    assert created.data.attribution.first_touch.kind == "form_submission"

    later = page_view("v-2", 30, campaign="retargeting", medium="social")
    await publish_views(producer, later)
    [_, touched] = await lead_events.events(2)
    assert touched.type == "lead.touched" and touched.key == str(created.data.lead_id)
    assert touched.occurred_at == later.occurred_at
    assert (touched.data.touch.kind, touched.data.touch.campaign_id) == ("page_view", "retargeting")
    assert touched.data.attribution.last_touch == touched.data.touch
    assert touched.data.attribution.first_touch.campaign_id == "spring"
    assert touched.data.created_at == form.occurred_at
    assert touched.data.anonymous_ids == ["v-2"]

    # A visit older than the form, arriving after it, becomes the first touch; created_at stays.
    earlier = page_view("v-2", -30, campaign="launch", medium="email")
    await publish_views(producer, earlier)
    [*_, moved] = await lead_events.events(3)
    assert moved.data.attribution.first_touch.campaign_id == "launch"
    assert moved.data.attribution.last_touch.campaign_id == "retargeting"
    assert moved.data.created_at == form.occurred_at

    lead = await leads.wait_for("bo@example.com", touches=3)
    detail = await leads.detail(lead["lead_id"])
    assert campaigns(detail["touches"]) == [
        ("page_view", "launch"),
        ("form_submission", "spring"),
        ("page_view", "retargeting"),
    ]
    assert parse(detail["created_at"]) == form.occurred_at


async def test_a_page_view_without_utm_is_no_touch_and_stores_nothing(leads, producer, lead_events):
    await publish(producer, submission("cy@example.com", 0, anonymous_id="v-3"))
    await lead_events.events(1)
    plain = page_view("v-3", 10)
    stranger = page_view("v-stranger", 10)  # no UTM, no lead
    # Same visitor, same partition: the marker is applied after the plain page view.
    marker = page_view("v-3", 20, campaign="spring")
    await publish_views(producer, plain, stranger, marker)

    [_, touched] = await lead_events.events(2)
    assert touched.data.touch.occurred_at == marker.occurred_at
    lead = await leads.wait_for("cy@example.com", touches=2)
    extra = await lead_events.quiet(1.5)
    assert len(extra) == 2  # no event for the plain page views
    detail = await leads.detail(lead["lead_id"])
    assert detail["touch_count"] == 2
    assert campaigns(detail["touches"]) == [("form_submission", None), ("page_view", "spring")]
    pool = leads.app.state.pool

    async def applied() -> bool:
        return await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", stranger.event_id) == 1

    await eventually(applied)
    assert [r["event_id"] for r in await pool.fetch("SELECT event_id FROM visits")] == [marker.event_id]


async def test_two_devices_of_one_lead(leads, producer, lead_events):
    await publish_views(
        producer,
        page_view("v-phone", -20, campaign="launch", medium="social"),
        page_view("v-laptop", -10, campaign="spring", medium="cpc"),
        page_view("v-other", -30, campaign="someone-else"),
    )
    await stored_visits(leads, 3)
    await publish(producer, submission("di@example.com", 0, anonymous_id="v-laptop"))
    [created] = await lead_events.events(1)
    assert created.data.anonymous_ids == ["v-laptop"]
    assert created.data.attribution.first_touch.campaign_id == "spring"

    await publish(producer, submission("di@example.com", 10, anonymous_id="v-phone"))
    [_, touched] = await lead_events.events(2)
    assert touched.data.anonymous_ids == ["v-laptop", "v-phone"]
    assert touched.data.attribution.first_touch.campaign_id == "launch"  # the phone's earlier visit
    assert touched.data.touch.kind == "form_submission"

    await publish_views(producer, page_view("v-phone", 20, campaign="retargeting"))
    [*_, last] = await lead_events.events(3)
    assert last.data.touch.campaign_id == "retargeting"
    assert last.data.anonymous_ids == ["v-laptop", "v-phone"]

    lead = await leads.wait_for("di@example.com", touches=5)
    detail = await leads.detail(lead["lead_id"])
    assert detail["anonymous_ids"] == ["v-laptop", "v-phone"]
    assert campaigns(detail["touches"]) == [
        ("page_view", "launch"),
        ("page_view", "spring"),
        ("form_submission", None),
        ("form_submission", None),
        ("page_view", "retargeting"),
    ]
    assert parse(detail["created_at"]) == T0


async def test_a_shared_device_belongs_to_everyone_who_submitted_from_it(leads, producer, lead_events):
    await publish_views(producer, page_view("v-shared", -10, campaign="launch"))
    await stored_visits(leads, 1)
    await publish(producer, submission("ed@example.com", 0, anonymous_id="v-shared"))
    await publish(producer, submission("fa@example.com", 5, anonymous_id="v-shared"))
    created = await lead_events.events(2)
    assert {e.type for e in created} == {"lead.created"}
    assert all(e.data.attribution.first_touch.campaign_id == "launch" for e in created)

    await publish_views(producer, page_view("v-shared", 10, campaign="spring"))
    touched = (await lead_events.events(4))[2:]
    assert {e.type for e in touched} == {"lead.touched"}
    assert {e.data.lead_id for e in touched} == {e.data.lead_id for e in created}
    for email in ("ed@example.com", "fa@example.com"):
        lead = await leads.wait_for(email, touches=3)
        detail = await leads.detail(lead["lead_id"])
        assert detail["anonymous_ids"] == ["v-shared"]
        assert campaigns(detail["touches"]) == [
            ("page_view", "launch"),
            ("form_submission", None),
            ("page_view", "spring"),
        ]


async def test_a_redelivered_page_view_or_a_second_link_touches_once(leads, producer, lead_events):
    await publish(producer, submission("gu@example.com", 0, anonymous_id="v-4"))
    await lead_events.events(1)
    visit = page_view("v-4", 10, campaign="spring")
    await publish_views(producer, visit, visit)  # an ingest retry: the same event twice
    await lead_events.events(2)
    await publish_views(producer, visit)  # and once more, after it was applied
    await publish_views(producer, page_view("v-4", 20, campaign="marker"))
    events = await lead_events.events(3)
    assert [e.data.touch.campaign_id for e in events[1:]] == ["spring", "marker"]
    # The visitor submits again: it is linked already, its visits are touches already.
    await publish(producer, submission("gu@example.com", 30, anonymous_id="v-4"))
    lead = await leads.wait_for("gu@example.com", touches=4)
    extra = await lead_events.quiet(1.5)
    assert len(extra) == 4
    detail = await leads.detail(lead["lead_id"])
    assert detail["touch_count"] == 4
    assert campaigns(detail["touches"]) == [
        ("form_submission", None),
        ("page_view", "spring"),
        ("page_view", "marker"),
        ("form_submission", None),
    ]
    assert detail["score"] == 5 + 10  # newsletter, three repeat touches (capped at 10)


# --- order independence and concurrency ------------------------------------------------------


def person(n: int) -> list[Envelope]:
    """One person's events: two campaign visits around two submissions from the same device."""
    visitor, email = f"v-{n}", f"p{n}@example.com"
    return [
        page_view(visitor, -60, campaign="launch", medium="email"),
        submission(email, 0, form_id="demo-request", name="Ha", anonymous_id=visitor),
        page_view(visitor, 30, campaign="retargeting", medium="social"),
        submission(email, 45, form_id="pricing", company="Acme", anonymous_id=visitor),
    ]


async def handle(uow, rules, event: Envelope) -> None:
    """What the consumer's handler does with the event (without the consumer's dedupe)."""
    if isinstance(event.data, PageView):
        await record_page_view(uow, event, rules, None)
    else:
        await record_submission(uow, event, rules, None)


async def apply(pool, rules, event: Envelope) -> None:
    async with unit_of_work(pool) as uow:
        await handle(uow, rules, event)


async def lead_facts(leads: Leads, email: str) -> dict:
    """What a lead came to, without what differs between people (ids, email, times of writing)."""
    lead = await leads.lead_by_email(email)
    detail = await leads.detail(lead["lead_id"])
    return {
        "touches": detail["touches"],
        "first_touch": detail["first_touch"],
        "last_touch": detail["last_touch"],
        "created_at": detail["created_at"],
        "score": detail["score"],
        "touch_count": detail["touch_count"],
        "profile": detail["profile"],
        "anonymous_ids": [i.split("-")[0] for i in detail["anonymous_ids"]],
        "history": [(h["from"], h["to"], h["occurred_at"]) for h in detail["stage_history"]],
    }


async def test_every_arrival_order_of_visits_and_submissions_gives_the_same_lead(leads, lead_events):
    rules = load_scoring_rules(leads.app.state.settings.scoring_config)
    pool = leads.app.state.pool
    orders = list(itertools.permutations(range(4)))
    for n, order in enumerate(orders):
        events = person(n)
        for i in order:
            await apply(pool, rules, events[i])

    results = [await lead_facts(leads, f"p{n}@example.com") for n in range(len(orders))]
    assert all(result == results[0] for result in results)
    facts = results[0]
    assert [(t["kind"], t["campaign_id"]) for t in facts["touches"]] == [
        ("page_view", "launch"),
        ("form_submission", None),
        ("page_view", "retargeting"),
        ("form_submission", None),
    ]
    assert parse(facts["created_at"]) == T0
    assert (facts["first_touch"]["campaign_id"], facts["last_touch"]["form_id"]) == ("launch", "pricing")
    assert facts["score"] == 30 + 10 + 5 + 10 + 10  # demo-request, pricing (other), name, company, repeats (cap)
    assert facts["history"] == [(None, "lead", facts["created_at"])]

    # Each order's last lead event says what the lead came to. A visit applied before the
    # first submission publishes nothing (no lead yet): the submission's event carries it.
    expected = sum(
        2 + sum(1 for k, i in enumerate(order) if i in (0, 2) and {1, 3} & set(order[:k])) for order in orders
    )
    events = await lead_events.events(expected)
    last = {}
    for event in events:
        last[event.data.lead_id] = event
    assert len(last) == len(orders)
    finals = {
        (e.data.created_at, e.data.attribution.first_touch, e.data.attribution.last_touch, e.data.score)
        for e in last.values()
    }
    assert len(finals) == 1
    assert all(len(e.data.anonymous_ids) == 1 for e in last.values())


async def test_a_page_view_and_the_submission_linking_its_visitor_at_once_see_each_other(leads):
    """Each, applied while the other's transaction is open, waits for the visitor's lock and
    then sees what the other wrote: the visit becomes a touch whichever commits first."""
    rules = load_scoring_rules(leads.app.state.settings.scoring_config)
    pool = leads.app.state.pool

    async def waiting_or_done(task: asyncio.Task) -> bool:
        sql = """SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'"""
        return task.done() or await pool.fetchval(sql) == 1

    for first_is_view in (True, False):
        visitor, email = f"v-{first_is_view}", f"{first_is_view}@example.com".lower()
        view, form = page_view(visitor, -10, campaign="launch"), submission(email, 0, anonymous_id=visitor)
        first, second = (view, form) if first_is_view else (form, view)
        async with unit_of_work(pool) as uow:
            await handle(uow, rules, first)
            other = asyncio.create_task(apply(pool, rules, second))
            # Without the visitor's lock the other would commit now, blind to this uncommitted work.
            await eventually(partial(waiting_or_done, other))
        await other

        lead = await leads.lead_by_email(email)
        detail = await leads.detail(lead["lead_id"])
        assert campaigns(detail["touches"]) == [("page_view", "launch"), ("form_submission", None)], first_is_view
        assert detail["first_touch"]["kind"] == "page_view"
        assert detail["anonymous_ids"] == [visitor]
        async with pool.acquire() as conn:
            assert await store.linked_leads(conn, visitor) == [uuid.UUID(lead["lead_id"])]
