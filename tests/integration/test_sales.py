"""The sales service against the real broker and database: lead events in, deals and
revenue through the API, deal events out through the outbox."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.sales.handlers import on_lead_stage_changed
from services.sales.main import build_app
from services.sales.settings import SalesSettings
from shared.db import create_pool
from shared.events import Attribution, Envelope, LeadCreated, LeadStageChanged, LeadTouched, Touch
from shared.kafka import EventProducer
from shared.pagination import encode_cursor
from shared.topics import ALL_TOPICS, DEAL_EVENTS, LEAD_EVENTS, ensure_topics
from shared.uow import unit_of_work
from tests.support import eventually, serve

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer test-token"}
DAY = timedelta(days=1)


def now() -> datetime:
    return datetime.now(UTC)


def attribution(campaign: str = "spring", at: datetime | None = None, last_campaign: str | None = None):
    at = at or now() - 30 * DAY
    first = Touch(campaign_id=campaign, channel="cpc", source="google", form_id="demo", occurred_at=at)
    last = Touch(campaign_id=last_campaign or campaign, channel="email", source="newsletter", occurred_at=at)
    return Attribution(first_touch=first, last_touch=last)


class Lead:
    """One lead's events, as the leads service would publish them."""

    def __init__(self, campaign: str = "spring", created_at: datetime | None = None) -> None:
        self.lead_id = uuid.uuid4()
        self.created_at = created_at or now() - 30 * DAY
        self.attribution = attribution(campaign, self.created_at)

    def envelope(self, data, occurred_at: datetime) -> Envelope:
        return Envelope.wrap(data, source="leads", key=str(self.lead_id), occurred_at=occurred_at)

    def created(self) -> Envelope:
        data = LeadCreated(
            lead_id=self.lead_id,
            email=f"{self.lead_id.hex[:8]}@example.com",
            created_at=self.created_at,
            attribution=self.attribution,
        )
        return self.envelope(data, self.created_at)

    def touched(self, campaign: str) -> Envelope:
        touch = Touch(campaign_id=campaign, channel="social", occurred_at=now() - DAY)
        self.attribution = Attribution(first_touch=self.attribution.first_touch, last_touch=touch)
        data = LeadTouched(
            lead_id=self.lead_id,
            email=f"{self.lead_id.hex[:8]}@example.com",
            touch=touch,
            score=10,
            created_at=self.created_at,
            attribution=self.attribution,
        )
        return self.envelope(data, touch.occurred_at)

    def moved(self, from_stage: str, to_stage: str, occurred_at: datetime | None = None) -> Envelope:
        occurred_at = occurred_at or now() - 10 * DAY
        data = LeadStageChanged(
            lead_id=self.lead_id,
            from_stage=from_stage,
            to_stage=to_stage,
            occurred_at=occurred_at,
            created_at=self.created_at,
            attribution=self.attribution,
        )
        return self.envelope(data, occurred_at)


@pytest.fixture
async def settings(make_settings, topic_prefix, topics) -> SalesSettings:
    # The topics exist before any reader opens them (the service would create them too).
    await ensure_topics(topics, ALL_TOPICS, prefix=topic_prefix)
    # A group of its own per test (production uses "sales"): runs never share offsets.
    return await make_settings(SalesSettings, consumer_group=f"sales-{topic_prefix.rstrip('.')}")


@pytest.fixture
async def client(settings):
    async with serve(build_app(settings)) as http:
        http.headers.update(AUTH)
        yield http


@pytest.fixture
async def db(settings, client):
    """A view into the service's own database, to check what the API cannot show."""
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def leads_out(topics, topic_prefix):
    producer = EventProducer(topics, client_id="test-leads", send_timeout=10, topic_prefix=topic_prefix)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def deal_events(topic_reader, topic_prefix, settings):
    return await topic_reader(topic_prefix + DEAL_EVENTS.name)


async def deals_of(client, lead: Lead, count: int = 1) -> list[dict]:
    async def listed():
        items = (await client.get("/v1/deals", params={"lead_id": str(lead.lead_id)})).json()["items"]
        return items if len(items) >= count else None

    return await eventually(listed)


async def known(db, lead: Lead) -> None:
    """Wait until the lead's events have reached the replica."""

    async def replicated():
        return await db.fetchval("SELECT true FROM leads WHERE lead_id = $1", lead.lead_id)

    await eventually(replicated)


async def deal_for(client, db, leads_out, **body) -> tuple[Lead, dict]:
    lead = body.pop("lead", None) or Lead()
    await leads_out.publish(LEAD_EVENTS, lead.created())
    await known(db, lead)
    response = await client.post("/v1/deals", json={"lead_id": str(lead.lead_id), **body})
    assert response.status_code == 201, response.text
    return lead, response.json()


def of_type(events: list[Envelope], event_type: str) -> list[Envelope]:
    return [e for e in events if e.type == event_type]


# --- handoff ----------------------------------------------------------------------------


async def test_sql_handoff_creates_one_deal_even_when_its_event_arrives_twice(client, db, leads_out, deal_events):
    lead = Lead()
    to_sql = lead.moved("mql", "sql")
    # The touch behind the copy (same key, same partition) shows when the copy has been consumed.
    await leads_out.publish_many(
        LEAD_EVENTS, [lead.created(), lead.moved("lead", "mql"), to_sql, to_sql, lead.touched("autumn")]
    )

    [deal] = await deals_of(client, lead)
    [created] = await deal_events.events(1)
    await eventually(
        lambda: db.fetchval(
            "SELECT attribution->'last_touch'->>'campaign_id' = 'autumn' FROM leads WHERE lead_id = $1",
            lead.lead_id,
        )
    )
    await deal_events.quiet()
    assert len(deal_events.records) == 1
    assert await db.fetchval("SELECT count(*) FROM deals") == 1

    assert deal["stage"] == "qualification" and deal["probability"] == 0.2
    assert deal["origin"] == "lead_handoff"
    assert datetime.fromisoformat(deal["created_at"]) == to_sql.data.occurred_at
    assert created.type == "deal.created" and created.key == str(lead.lead_id)
    assert created.data.deal_id == uuid.UUID(deal["deal_id"])
    assert created.data.lead_id == lead.lead_id
    assert created.data.lead_created_at == lead.created_at
    assert created.data.attribution.last_touch.campaign_id == "spring"  # as it was at the handoff
    assert created.data.created_at == to_sql.data.occurred_at
    assert created.data.stage == "qualification" and created.data.currency == "EUR"
    assert await db.fetchval("SELECT stage FROM leads WHERE lead_id = $1", lead.lead_id) == "sql"


async def test_the_source_event_id_guards_the_handoff_even_past_processed_events(settings, client, db):
    # Straight to the handler twice, as if processed_events had lost its row: still one deal.
    lead = Lead()
    to_sql = lead.moved("mql", "sql")
    pool = await create_pool(settings.database_url)
    try:
        for _ in range(2):
            async with unit_of_work(pool) as uow:
                await on_lead_stage_changed(to_sql, uow, currency="EUR")
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM deals WHERE source_event_id = $1", to_sql.event_id) == 1
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE payload->>'type' = 'deal.created'") == 1


async def test_a_recycled_lead_that_reaches_sql_again_gets_a_new_deal(client, leads_out, deal_events):
    lead = Lead()
    await leads_out.publish_many(
        LEAD_EVENTS,
        [
            lead.created(),
            lead.moved("mql", "sql", now() - 20 * DAY),
            lead.moved("sql", "disqualified", now() - 15 * DAY),
            lead.moved("disqualified", "mql", now() - 10 * DAY),
            lead.moved("mql", "sql", now() - 5 * DAY),
        ],
    )
    deals = await deals_of(client, lead, count=2)
    events = await deal_events.events(2)
    assert len({d["deal_id"] for d in deals}) == 2
    assert [e.type for e in events] == ["deal.created", "deal.created"]


async def test_deal_events_carry_the_lead_attribution_as_it_is_now(client, db, leads_out, deal_events):
    lead = Lead(campaign="spring")
    await leads_out.publish_many(LEAD_EVENTS, [lead.created(), lead.touched("autumn")])

    async def touched():
        return await db.fetchval(
            "SELECT attribution->'last_touch'->>'campaign_id' = 'autumn' FROM leads WHERE lead_id = $1",
            lead.lead_id,
        )

    await eventually(touched)
    response = await client.post("/v1/deals", json={"lead_id": str(lead.lead_id)})
    [created] = await deal_events.events(1)
    assert response.status_code == 201
    assert created.data.attribution.first_touch.campaign_id == "spring"
    assert created.data.attribution.last_touch.campaign_id == "autumn"
    assert (await db.fetchval("SELECT email FROM leads WHERE lead_id = $1", lead.lead_id)).endswith("example.com")


# --- the pipeline -----------------------------------------------------------------------


async def test_open_stages_move_both_ways_and_each_move_is_published_once(client, db, leads_out, deal_events):
    lead, deal = await deal_for(client, db, leads_out, name="Acme pilot", amount="1200.50")
    path = f"/v1/deals/{deal['deal_id']}"
    moves = [("proposal", 0.5), ("negotiation", 0.8), ("proposal", 0.5)]
    for stage, chance in moves:
        response = await client.patch(path, json={"stage": stage})
        assert response.status_code == 200, response.text
        assert response.json()["stage"] == stage and response.json()["probability"] == chance

    same = await client.patch(path, json={"stage": "proposal", "expected_close_date": "2030-01-31"})
    assert same.status_code == 200  # a no-op for the stage, the date is still applied
    assert same.json()["expected_close_date"] == "2030-01-31"
    again = await client.patch(path, json={"stage": "proposal", "expected_close_date": "2030-01-31"})
    assert again.status_code == 200 and again.json()["history"] == same.json()["history"]

    events = await deal_events.events(2 + len(moves))
    await deal_events.quiet()
    # Nothing for the stage no-ops; the new date once (the repeated PATCH changed nothing).
    assert len(deal_events.records) == 2 + len(moves)
    [details] = of_type(events, "deal.details_changed")
    assert str(details.data.expected_close_date) == "2030-01-31" and str(details.data.amount) == "1200.50"
    changes = of_type(events, "deal.stage_changed")
    assert [(e.data.from_stage, e.data.to_stage, e.data.probability) for e in changes] == [
        ("qualification", "proposal", 0.5),
        ("proposal", "negotiation", 0.8),
        ("negotiation", "proposal", 0.5),
    ]
    assert all(e.data.attribution == lead.attribution for e in changes)

    detail = (await client.get(path)).json()
    assert [(h["from"], h["to"]) for h in detail["history"]] == [
        (None, "qualification"),
        ("qualification", "proposal"),
        ("proposal", "negotiation"),
        ("negotiation", "proposal"),
    ]
    assert detail["amount"] == "1200.50" and detail["name"] == "Acme pilot"


async def test_a_backfilled_stage_move_keeps_its_time_but_not_before_the_previous_one(client, db, leads_out):
    _, deal = await deal_for(client, db, leads_out, occurred_at=(now() - 10 * DAY).isoformat())
    path = f"/v1/deals/{deal['deal_id']}"
    moved_at = now() - 5 * DAY
    response = await client.patch(path, json={"stage": "proposal", "occurred_at": moved_at.isoformat()})
    assert response.status_code == 200
    assert datetime.fromisoformat(response.json()["stage_entered_at"]) == moved_at

    earlier = await client.patch(path, json={"stage": "negotiation", "occurred_at": (now() - 7 * DAY).isoformat()})
    assert earlier.status_code == 409  # out of order with the deal's history
    assert "before the deal's last stage change" in earlier.json()["detail"]
    assert (await client.get(path)).json()["stage"] == "proposal"


async def test_won_and_lost_deals_are_immutable(client, db, leads_out, deal_events):
    lead, won = await deal_for(client, db, leads_out)
    _, lost = await deal_for(client, db, leads_out, lead=lead)
    won_path, lost_path = f"/v1/deals/{won['deal_id']}", f"/v1/deals/{lost['deal_id']}"

    won_response = await client.post(f"{won_path}/won", json={"amount": "5000", "currency": "EUR"})
    assert won_response.status_code == 200
    lost_response = await client.post(f"{lost_path}/lost", json={"reason": "price", "objections": ["too expensive"]})
    assert lost_response.status_code == 200
    assert lost_response.json()["lost_reason"] == "price"
    assert lost_response.json()["objections"] == ["too expensive"]

    for path in (won_path, lost_path):
        for method, suffix, body in [
            ("PATCH", "", {"stage": "proposal"}),
            ("PATCH", "", {"amount": "10"}),
            ("POST", "/won", {"amount": "10"}),
            ("POST", "/lost", {"reason": "changed our mind"}),
        ]:
            refused = await client.request(method, path + suffix, json=body)
            assert refused.status_code == 409, (path, suffix, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"

    # The refusals changed nothing.
    assert (await client.get(won_path)).json() == won_response.json()
    assert (await client.get(lost_path)).json() == lost_response.json()
    final_won = won_response.json()
    assert final_won["stage"] == "won" and final_won["amount"] == "5000.00" and final_won["probability"] == 1.0
    assert [h["to"] for h in final_won["history"]] == ["qualification", "won"]

    events = await deal_events.events(4)
    await deal_events.quiet()
    assert [e.type for e in events] == ["deal.created", "deal.created", "deal.won", "deal.lost"]
    assert len(deal_events.records) == 4
    won_event, lost_event = events[2].data, events[3].data
    assert str(won_event.amount) == "5000.00" and won_event.first_win is True
    assert lost_event.reason == "price" and lost_event.objections == ["too expensive"]


async def test_only_the_first_won_deal_makes_a_new_customer(client, db, leads_out, deal_events):
    lead, first = await deal_for(client, db, leads_out)
    _, second = await deal_for(client, db, leads_out, lead=lead)
    for deal in (first, second):
        response = await client.post(f"/v1/deals/{deal['deal_id']}/won", json={"amount": 100})
        assert response.status_code == 200
    wins = of_type(await deal_events.events(4), "deal.won")
    assert [(str(w.data.deal_id), w.data.first_win) for w in wins] == [
        (first["deal_id"], True),
        (second["deal_id"], False),
    ]
    customer = (await client.get(f"/v1/customers/{lead.lead_id}")).json()
    assert customer["first_deal_id"] == first["deal_id"]
    assert {d["deal_id"] for d in customer["won_deals"]} == {first["deal_id"], second["deal_id"]}


# --- revenue ----------------------------------------------------------------------------


async def test_revenue_needs_a_customer_and_records_an_event_id_once(client, db, leads_out, deal_events):
    lead, deal = await deal_for(client, db, leads_out, occurred_at=(now() - 10 * DAY).isoformat())
    path = f"/v1/customers/{lead.lead_id}/revenue"
    body = {"amount": "99.90", "currency": "EUR", "kind": "renewal", "event_id": str(uuid.uuid4())}

    not_yet = await client.post(path, json=body)
    assert not_yet.status_code == 409 and "no won deal" in not_yet.json()["detail"]
    assert (await client.get(f"/v1/customers/{lead.lead_id}")).status_code == 404

    won_at = now() - 2 * DAY
    won = await client.post(
        f"/v1/deals/{deal['deal_id']}/won", json={"amount": "1000", "occurred_at": won_at.isoformat()}
    )
    assert won.status_code == 200
    before_customer = await client.post(path, json=body | {"occurred_at": (won_at - DAY).isoformat()})
    assert before_customer.status_code == 409  # out of order: before the lead became a customer
    assert "before the lead became a customer" in before_customer.json()["detail"]
    first = await client.post(path, json=body)
    again = await client.post(path, json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["revenue_id"] == body["event_id"] and first.json()["amount"] == "99.90"

    reused = await client.post(path, json=body | {"amount": "5"})
    assert reused.status_code == 409
    without_id = {"amount": "10", "kind": "upsell"}
    assert (await client.post(path, json=without_id)).status_code == 201
    assert (await client.post(path, json=without_id)).status_code == 201  # no key: two records

    events = await deal_events.events(5)
    await deal_events.quiet()
    revenue = of_type(events, "customer.revenue_recorded")
    assert len(deal_events.records) == 5 and len(revenue) == 3
    assert str(revenue[0].data.revenue_id) == body["event_id"]
    assert str(revenue[0].data.amount) == "99.90" and revenue[0].data.kind == "renewal"
    assert revenue[0].data.attribution == lead.attribution and revenue[0].key == str(lead.lead_id)

    customer = (await client.get(f"/v1/customers/{lead.lead_id}")).json()
    assert sorted(r["amount"] for r in customer["revenue"]) == ["10.00", "10.00", "99.90"]


async def test_revenue_for_an_unknown_lead_is_404(client):
    response = await client.post(f"/v1/customers/{uuid.uuid4()}/revenue", json={"amount": "1", "kind": "purchase"})
    assert response.status_code == 404


# --- the outbox -------------------------------------------------------------------------


async def test_every_committed_change_publishes_one_event_and_refused_ones_none(client, db, leads_out, deal_events):
    lead, deal = await deal_for(client, db, leads_out)
    path = f"/v1/deals/{deal['deal_id']}"
    requests = [
        ("PATCH", path, {"stage": "proposal"}, 200),
        ("PATCH", path, {"stage": "proposal", "currency": "USD"}, 422),
        ("PATCH", path, {"stage": "negotiation", "occurred_at": (now() + DAY).isoformat()}, 422),
        ("POST", f"{path}/won", {"amount": "0"}, 422),
        ("POST", f"{path}/won", {"amount": "250.00"}, 200),
        ("POST", f"{path}/lost", {"reason": "too late"}, 409),
        ("POST", f"/v1/customers/{lead.lead_id}/revenue", {"amount": "1.005", "kind": "upsell"}, 422),
        ("POST", f"/v1/customers/{lead.lead_id}/revenue", {"amount": "40", "kind": "upsell"}, 201),
    ]
    for method, url, body, status in requests:
        response = await client.request(method, url, json=body)
        assert response.status_code == status, (method, url, body, response.text)

    expected = ["deal.created", "deal.stage_changed", "deal.won", "customer.revenue_recorded"]
    events = await deal_events.events(len(expected))
    await deal_events.quiet()
    assert [e.type for e in events] == expected
    assert len(deal_events.records) == len(expected)
    assert len({e.event_id for e in events}) == len(expected)
    await eventually(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"))
    assert await db.fetchval("SELECT count(*) FROM outbox") == len(expected)


# --- listing ----------------------------------------------------------------------------


async def test_listing_pages_through_every_deal_once_and_filters(client, db, leads_out):
    spring, autumn = Lead(campaign="spring"), Lead(campaign="autumn")
    made = []
    for lead in (spring, spring, spring, autumn, autumn):
        made.append((await deal_for(client, db, leads_out, lead=lead))[1]["deal_id"])
    await client.patch(f"/v1/deals/{made[0]}", json={"stage": "proposal"})

    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/deals", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [d["deal_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made  # oldest first (in the order sales recorded them), each once

    async def ids(**params) -> set[str]:
        return {d["deal_id"] for d in (await client.get("/v1/deals", params=params)).json()["items"]}

    assert await ids(campaign_id="autumn") == set(made[3:])
    assert await ids(lead_id=str(spring.lead_id)) == set(made[:3])
    assert await ids(stage="proposal") == {made[0]}
    assert await ids(stage="proposal", campaign_id="autumn") == set()


# --- validation and auth ----------------------------------------------------------------


async def test_every_invalid_input_is_a_clear_422_naming_its_field(client, db, leads_out):
    lead, deal = await deal_for(client, db, leads_out, occurred_at=(now() - 5 * DAY).isoformat())
    deal_path = f"/v1/deals/{deal['deal_id']}"
    lead_id = str(lead.lead_id)
    cases = [
        ("POST", "/v1/deals", {}, "lead_id"),
        ("POST", "/v1/deals", {"lead_id": "not-a-uuid"}, "lead_id"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "amount": "12.345"}, "amount"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "amount": "-5"}, "amount"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "amount": 1.5e300}, "amount"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "amount": "NaN"}, "amount"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "currency": "USD"}, "currency"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "stage": "won"}, "stage"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "stage": "closing"}, "stage"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "name": ""}, "name"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "amont": "5"}, "amont"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "occurred_at": "2025-01-01T10:00:00"}, "occurred_at"),
        ("POST", "/v1/deals", {"lead_id": lead_id, "occurred_at": (now() + DAY).isoformat()}, "occurred_at"),
        ("PATCH", deal_path, {}, "stage"),
        ("PATCH", deal_path, {"stage": "lost"}, "stage"),
        ("PATCH", deal_path, {"amount": "0"}, "amount"),
        ("PATCH", deal_path, {"amount": "1", "currency": "GBP"}, "currency"),
        ("PATCH", deal_path, {"expected_close_date": "next week"}, "expected_close_date"),
        ("PATCH", deal_path, {"stage": "proposal", "occurred_at": (now() + DAY).isoformat()}, "occurred_at"),
        ("POST", f"{deal_path}/won", {}, "amount"),
        ("POST", f"{deal_path}/won", {"amount": "0"}, "amount"),
        ("POST", f"{deal_path}/won", {"amount": "10.001"}, "amount"),
        ("POST", f"{deal_path}/won", {"amount": "10", "currency": "USD"}, "currency"),
        ("POST", f"{deal_path}/won", {"amount": "10", "occurred_at": "2025-01-01T10:00:00"}, "occurred_at"),
        ("POST", f"{deal_path}/lost", {}, "reason"),
        ("POST", f"{deal_path}/lost", {"reason": "   "}, "reason"),
        ("POST", f"{deal_path}/lost", {"reason": "price", "objections": "too expensive"}, "objections"),
        ("POST", f"{deal_path}/lost", {"reason": "price", "objections": [""]}, "objections[0]"),
        ("POST", f"/v1/customers/{lead_id}/revenue", {"amount": "5"}, "kind"),
        ("POST", f"/v1/customers/{lead_id}/revenue", {"amount": "5", "kind": "refund"}, "kind"),
        ("POST", f"/v1/customers/{lead_id}/revenue", {"kind": "purchase"}, "amount"),
        (
            "POST",
            f"/v1/customers/{lead_id}/revenue",
            {"amount": "5", "kind": "purchase", "currency": "USD"},
            "currency",
        ),
        (
            "POST",
            f"/v1/customers/{lead_id}/revenue",
            {"amount": "5", "kind": "purchase", "event_id": "x"},
            "event_id",
        ),
        ("POST", "/v1/customers/not-a-uuid/revenue", {"amount": "5", "kind": "purchase"}, "lead_id"),
        ("GET", "/v1/deals/not-a-uuid", None, "deal_id"),
        ("PATCH", "/v1/deals/not-a-uuid", {"stage": "proposal"}, "deal_id"),
        ("GET", "/v1/customers/not-a-uuid", None, "lead_id"),
        ("GET", "/v1/deals?limit=0", None, "limit"),
        ("GET", "/v1/deals?limit=1000", None, "limit"),
        ("GET", "/v1/deals?stage=closing", None, "stage"),
        ("GET", "/v1/deals?lead_id=42", None, "lead_id"),
        ("GET", "/v1/deals?cursor=bm90LWEtY3Vyc29y", None, "cursor"),
        ("GET", "/v1/deals?cursor=%%%", None, "cursor"),
    ]
    for method, url, body, field in cases:
        response = await client.request(method, url, json=body)
        assert response.status_code == 422, (method, url, body, response.text)
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert field in [e["field"] for e in problem["errors"]], (method, url, body, problem)
    # Nothing above changed the deal.
    assert (await client.get(deal_path)).json()["history"] == deal["history"]


async def test_the_currency_error_names_the_expected_currency(client, db, leads_out):
    lead, _ = await deal_for(client, db, leads_out)
    response = await client.post("/v1/deals", json={"lead_id": str(lead.lead_id), "currency": "USD"})
    assert response.status_code == 422
    assert "EUR" in response.json()["detail"] and "USD" in response.json()["detail"]


async def test_too_many_decimals_are_refused_not_rounded(client, db, leads_out):
    _, deal = await deal_for(client, db, leads_out)
    response = await client.post(f"/v1/deals/{deal['deal_id']}/won", json={"amount": "10.999"})
    assert response.status_code == 422
    assert "2 decimal places" in response.json()["errors"][0]["message"]
    assert (await client.get(f"/v1/deals/{deal['deal_id']}")).json()["stage"] == "qualification"


async def test_unknown_deals_and_leads_are_404(client):
    missing = uuid.uuid4()
    for method, url, body in [
        ("GET", f"/v1/deals/{missing}", None),
        ("PATCH", f"/v1/deals/{missing}", {"stage": "proposal"}),
        ("POST", f"/v1/deals/{missing}/won", {"amount": "1"}),
        ("POST", f"/v1/deals/{missing}/lost", {"reason": "x"}),
        ("POST", f"/v1/deals/{missing}/accept", {}),
        ("POST", f"/v1/deals/{missing}/reject", {"reason": "x"}),
        ("POST", f"/v1/deals/{missing}/objections", {"objections": ["x"]}),
        ("POST", "/v1/deals", {"lead_id": str(missing)}),
        ("GET", f"/v1/customers/{missing}", None),
    ]:
        response = await client.request(method, url, json=body)
        assert response.status_code == 404, (method, url, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_the_api_needs_a_valid_token(client):
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdA=="},
    ):
        for method, url in [
            ("GET", "/v1/deals"),
            ("POST", "/v1/deals"),
            ("GET", f"/v1/customers/{uuid.uuid4()}"),
        ]:
            response = await client.request(method, url, headers=headers, json={})
            assert response.status_code == 401, (headers, url)
            assert response.headers["www-authenticate"] == "Bearer"
    assert (await client.get("/health/live", headers={"Authorization": ""})).status_code == 200


async def test_a_moment_before_the_deals_history_is_a_409_naming_occurred_at(client, db, leads_out):
    lead, deal = await deal_for(client, db, leads_out, occurred_at=(now() - 5 * DAY).isoformat())
    deal_path = f"/v1/deals/{deal['deal_id']}"
    for method, url, body in (
        ("POST", "/v1/deals", {"lead_id": str(lead.lead_id), "occurred_at": (lead.created_at - DAY).isoformat()}),
        ("PATCH", deal_path, {"stage": "proposal", "occurred_at": (now() - 6 * DAY).isoformat()}),
        ("POST", f"{deal_path}/won", {"amount": "10", "occurred_at": (now() - 6 * DAY).isoformat()}),
    ):
        response = await client.request(method, url, json=body)
        assert response.status_code == 409, (method, url, response.text)
        problem = response.json()
        assert problem["title"] == "Out of order" and problem["field"] == "occurred_at"
    assert (await client.get(deal_path)).json()["stage"] == "qualification"


async def test_a_cursor_beyond_bigint_is_an_empty_page_not_a_500(client):
    # Of the right shape (16 hex digits), but past any seq a bigint holds: after every deal.
    response = await client.get("/v1/deals", params={"cursor": encode_cursor(2**64 - 1)})
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}
    response = await client.get("/v1/deals", params={"cursor": "seq:1"})
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == ["cursor"]


async def test_nul_characters_in_stored_text_are_a_422_not_a_500(client, db, leads_out):
    # Postgres text cannot hold U+0000: unchecked, these reached the database and failed there.
    lead, deal = await deal_for(client, db, leads_out)
    deal_path = f"/v1/deals/{deal['deal_id']}"
    cases = [
        ("POST", "/v1/deals", {"lead_id": str(lead.lead_id), "name": "Acme\u0000"}, "name"),
        ("POST", f"{deal_path}/lost", {"reason": "pri\u0000ce"}, "reason"),
        ("POST", f"{deal_path}/lost", {"reason": "price", "objections": ["\u0000"]}, "objections[0]"),
        ("GET", "/v1/deals?campaign_id=%00", None, "campaign_id"),
    ]
    for method, url, body, field in cases:
        response = await client.request(method, url, json=body)
        assert response.status_code == 422, (method, url, body, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], (url, response.json())
    assert (await client.get(deal_path)).json()["stage"] == "qualification"


# --- the handoff answered ---------------------------------------------------------------


def instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def sla(deal: dict) -> tuple[datetime, datetime | None, bool | None]:
    answer = deal["sla"]
    return instant(answer["due_at"]), instant(answer["responded_at"]), answer["within_sla"]


async def handoff(client, leads_out, at: datetime | None = None) -> tuple[Lead, dict]:
    """A lead reaching SQL, and the deal that hands it over."""
    lead = Lead()
    await leads_out.publish_many(LEAD_EVENTS, [lead.created(), lead.moved("mql", "sql", at or now() - 10 * DAY)])
    [deal] = await deals_of(client, lead)
    return lead, deal


async def test_a_handoff_awaits_an_answer_and_accepting_it_publishes_deal_accepted(client, leads_out, deal_events):
    handed_at = now() - 3 * DAY
    lead, deal = await handoff(client, leads_out, handed_at)
    path = f"/v1/deals/{deal['deal_id']}"
    assert deal["handoff"] is True and deal["origin"] == "lead_handoff"
    assert deal["accepted_at"] is None and deal["rejected_at"] is None
    # Three days old and unanswered: past the 24 hours (EMBUDO_SLA_ACCEPT_HOURS' default).
    assert sla(deal) == (handed_at + DAY, None, False)

    accepted_at = handed_at + timedelta(hours=2)
    response = await client.post(f"{path}/accept", json={"occurred_at": accepted_at.isoformat()})
    assert response.status_code == 200, response.text
    accepted = response.json()
    assert instant(accepted["accepted_at"]) == accepted_at and accepted["stage"] == "qualification"
    assert sla(accepted) == (handed_at + DAY, accepted_at, True)
    assert [h["to"] for h in accepted["history"]] == ["qualification"]  # accepting is no stage change

    for suffix, body in (("/accept", {}), ("/reject", {"reason": "not a fit"})):
        refused = await client.post(path + suffix, json=body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["title"] == "Handoff already answered"
    assert (await client.get(path)).json() == accepted

    created, accepted_event = await deal_events.events(2)
    await deal_events.quiet()
    assert len(deal_events.records) == 2
    assert created.type == "deal.created" and created.data.handoff is True
    assert created.data.probability == 0.2 and created.data.expected_close_date is None
    assert accepted_event.type == "deal.accepted" and accepted_event.key == str(lead.lead_id)
    assert accepted_event.data.deal_id == uuid.UUID(deal["deal_id"]) and accepted_event.data.lead_id == lead.lead_id
    assert accepted_event.data.occurred_at == accepted_at
    assert (
        accepted_event.data.lead_created_at == lead.created_at and accepted_event.data.attribution == lead.attribution
    )


async def test_accepting_without_a_body_means_now(client, leads_out):
    _, deal = await handoff(client, leads_out, now() - timedelta(hours=1))
    before = now()
    response = await client.post(f"/v1/deals/{deal['deal_id']}/accept")
    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["accepted_at"]) >= before
    assert response.json()["sla"]["within_sla"] is True


async def test_a_rejected_handoff_is_closed_as_rejected_with_its_reason(client, leads_out, deal_events):
    handed_at = now() - 3 * DAY
    lead, deal = await handoff(client, leads_out, handed_at)
    path = f"/v1/deals/{deal['deal_id']}"
    assert (await client.post(f"{path}/reject", json={})).status_code == 422  # a reason is required
    assert (await client.post(f"{path}/reject", json={"reason": "  "})).status_code == 422

    rejected_at = handed_at + timedelta(hours=30)
    response = await client.post(
        f"{path}/reject", json={"reason": "no budget this year", "occurred_at": rejected_at.isoformat()}
    )
    assert response.status_code == 200, response.text
    rejected = response.json()
    assert rejected["stage"] == "rejected" and rejected["probability"] == 0.0
    assert instant(rejected["rejected_at"]) == rejected_at and instant(rejected["closed_at"]) == rejected_at
    assert rejected["rejection_reason"] == "no budget this year" and rejected["accepted_at"] is None
    assert rejected["lost_reason"] is None
    assert sla(rejected) == (handed_at + DAY, rejected_at, False)  # answered after 30 hours
    assert [(h["from"], h["to"]) for h in rejected["history"]] == [
        (None, "qualification"),
        ("qualification", "rejected"),
    ]

    # Closed: nothing changes it any more.
    for method, suffix, body in [
        ("POST", "/accept", {}),
        ("POST", "/reject", {"reason": "again"}),
        ("PATCH", "", {"stage": "proposal"}),
        ("PATCH", "", {"amount": "10"}),
        ("POST", "/won", {"amount": "10"}),
        ("POST", "/lost", {"reason": "x"}),
        ("POST", "/objections", {"objections": ["too expensive"]}),
    ]:
        refused = await client.request(method, path + suffix, json=body)
        assert refused.status_code == 409, (suffix, refused.text)
    assert (await client.get(path)).json() == rejected
    listed = (await client.get("/v1/deals", params={"stage": "rejected"})).json()["items"]
    assert [d["deal_id"] for d in listed] == [deal["deal_id"]]

    events = await deal_events.events(2)
    await deal_events.quiet()
    assert [e.type for e in events] == ["deal.created", "deal.rejected"]
    assert len(deal_events.records) == 2
    assert events[1].data.reason == "no budget this year" and events[1].data.occurred_at == rejected_at
    assert events[1].data.lead_id == lead.lead_id and events[1].key == str(lead.lead_id)


async def test_working_an_unanswered_handoff_accepts_it_at_that_moment(client, leads_out, deal_events):
    handed_at = now() - 5 * DAY
    moved, won, lost = [await handoff(client, leads_out, handed_at) for _ in range(3)]
    at = handed_at + DAY + timedelta(hours=1)
    # New details alone are no answer to the handoff.
    details = await client.patch(f"/v1/deals/{moved[1]['deal_id']}", json={"amount": "900"})
    assert details.status_code == 200 and details.json()["accepted_at"] is None

    requests = [
        (moved, "PATCH", "", {"stage": "proposal", "occurred_at": at.isoformat()}, "deal.stage_changed"),
        (won, "POST", "/won", {"amount": "800", "occurred_at": at.isoformat()}, "deal.won"),
        (lost, "POST", "/lost", {"reason": "price", "occurred_at": at.isoformat()}, "deal.lost"),
    ]
    for (_, deal), method, suffix, body, _ in requests:
        response = await client.request(method, f"/v1/deals/{deal['deal_id']}{suffix}", json=body)
        assert response.status_code == 200, response.text
        assert instant(response.json()["accepted_at"]) == at
        assert response.json()["sla"]["within_sla"] is False  # 25 hours after the handoff
    # Accepted once: a later move is just a move.
    later = await client.patch(f"/v1/deals/{moved[1]['deal_id']}", json={"stage": "negotiation"})
    assert later.status_code == 200 and instant(later.json()["accepted_at"]) == at

    events = await deal_events.events(3 + 1 + 3 * 2 + 1)
    await deal_events.quiet()
    assert len(deal_events.records) == 11
    for (lead, deal), *_, change in requests:
        of_deal = [e for e in events if str(e.data.deal_id) == deal["deal_id"]]
        types = [e.type for e in of_deal if e.type not in ("deal.created", "deal.details_changed")]
        assert types[:2] == ["deal.accepted", change], types  # accepted first, in the same transaction
        assert of_deal[[e.type for e in of_deal].index("deal.accepted")].data.occurred_at == at
        assert all(e.key == str(lead.lead_id) for e in of_deal)
    assert len(of_type(events, "deal.accepted")) == 3
    [amount] = of_type(events, "deal.details_changed")
    assert str(amount.data.amount) == "900.00" and amount.data.currency == "EUR"


async def test_deals_sales_opens_itself_are_no_handoffs(client, db, leads_out, deal_events):
    lead, deal = await deal_for(client, db, leads_out, expected_close_date="2031-03-31", stage="proposal")
    path = f"/v1/deals/{deal['deal_id']}"
    assert deal["handoff"] is False and deal["origin"] == "api" and deal["sla"] is None
    assert deal["accepted_at"] == deal["created_at"]  # taken by opening it
    assert deal["expected_close_date"] == "2031-03-31"
    for suffix, body in (("/accept", {}), ("/reject", {"reason": "no"})):
        refused = await client.post(path + suffix, json=body)
        assert refused.status_code == 409 and refused.json()["title"] == "Not a handoff", refused.text
    assert (await client.post(f"{path}/won", json={"amount": "10"})).status_code == 200

    events = await deal_events.events(2)
    await deal_events.quiet()
    assert [e.type for e in events] == ["deal.created", "deal.won"]  # no deal.accepted
    created = events[0].data
    assert created.handoff is False and created.probability == 0.5 and str(created.expected_close_date) == "2031-03-31"


async def test_an_answer_is_not_dated_before_the_handoff_nor_in_the_future(client, leads_out, deal_events):
    handed_at = now() - DAY
    _, deal = await handoff(client, leads_out, handed_at)
    path = f"/v1/deals/{deal['deal_id']}"
    for suffix, body in (("/accept", {}), ("/reject", {"reason": "not a fit"})):
        early = await client.post(path + suffix, json=body | {"occurred_at": (handed_at - DAY).isoformat()})
        assert early.status_code == 409 and early.json()["title"] == "Out of order", early.text
        assert "before the deal's created_at" in early.json()["detail"]
        future = await client.post(path + suffix, json=body | {"occurred_at": (now() + DAY).isoformat()})
        assert future.status_code == 422 and future.json()["errors"][0]["field"] == "occurred_at"
    unanswered = (await client.get(path)).json()
    assert unanswered["accepted_at"] is None and unanswered["stage"] == "qualification"
    await deal_events.events(1)
    await deal_events.quiet()
    assert len(deal_events.records) == 1  # the refusals published nothing


async def test_details_changes_are_published_as_they_are_now(client, db, leads_out, deal_events):
    _, deal = await deal_for(client, db, leads_out, amount="100", occurred_at=(now() - 5 * DAY).isoformat())
    path = f"/v1/deals/{deal['deal_id']}"
    at = now() - 2 * DAY
    steps = [
        ({"amount": "250.5", "occurred_at": at.isoformat()}, 200),
        ({"expected_close_date": "2031-01-15"}, 200),
        ({"amount": "250.50", "expected_close_date": "2031-01-15"}, 200),  # as it is: nothing to publish
        ({"amount": "300", "occurred_at": (now() - 6 * DAY).isoformat()}, 409),  # before the deal's created_at
    ]
    for body, status in steps:
        response = await client.patch(path, json=body)
        assert response.status_code == status, (body, response.text)

    events = await deal_events.events(3)
    await deal_events.quiet()
    assert len(deal_events.records) == 3
    first, second = (e.data for e in of_type(events, "deal.details_changed"))
    assert (str(first.amount), first.expected_close_date, first.occurred_at) == ("250.50", None, at)
    assert (str(second.amount), str(second.expected_close_date)) == ("250.50", "2031-01-15")
    assert (await client.get(path)).json()["amount"] == "250.50"


# --- objections ---------------------------------------------------------------------------


async def test_objections_count_under_the_vocabularys_keys_and_keep_their_text(client, leads_out, deal_events):
    _, open_deal = await handoff(client, leads_out)
    path = f"/v1/deals/{open_deal['deal_id']}"
    said = ["Too expensive", "too expensive!", "Pricey", "No budget", "Our CFO dislikes purple"]
    at = now() - DAY
    response = await client.post(f"{path}/objections", json={"objections": said, "occurred_at": at.isoformat()})
    assert response.status_code == 200, response.text
    recorded = response.json()["recorded_objections"]
    assert [(o["key"], o["text"], o["stage"]) for o in recorded] == [
        ("price", "Too expensive", "qualification"),
        ("price", "too expensive!", "qualification"),
        ("price", "Pricey", "qualification"),
        ("budget", "No budget", "qualification"),
        ("other", "Our CFO dislikes purple", "qualification"),
    ]
    assert response.json()["accepted_at"] is None  # hearing objections is no answer to the handoff
    assert response.json()["objections"] == []  # the loss's objections, as before

    won = await client.post(f"{path}/won", json={"amount": "100"})
    assert won.status_code == 200
    after_win = await client.post(f"{path}/objections", json={"objections": ["Not now"]})
    assert after_win.status_code == 200, after_win.text
    assert [(o["key"], o["stage"]) for o in after_win.json()["recorded_objections"]][-1] == ("timing", "won")

    _, to_lose = await handoff(client, leads_out)
    lost_path = f"/v1/deals/{to_lose['deal_id']}"
    lost = await client.post(f"{lost_path}/lost", json={"reason": "price", "objections": ["TOO EXPENSIVE.", "meh"]})
    assert lost.status_code == 200
    assert lost.json()["objections"] == ["TOO EXPENSIVE.", "meh"]
    assert [(o["key"], o["stage"]) for o in lost.json()["recorded_objections"]] == [
        ("price", "lost"),
        ("other", "lost"),
    ]
    refused = await client.post(f"{lost_path}/objections", json={"objections": ["too late"]})
    assert refused.status_code == 409 and "lost" in refused.json()["detail"]
    for body in ({"objections": []}, {}, {"objections": [" "]}, {"objections": ["x" * 201]}):
        assert (await client.post(f"{path}/objections", json=body)).status_code == 422, body
    assert (await client.post(f"/v1/deals/{uuid.uuid4()}/objections", json={"objections": ["x"]})).status_code == 404

    events = await deal_events.events(8)
    await deal_events.quiet()
    assert len(deal_events.records) == 8  # 2 created, objections, accepted, won, objections, accepted, lost
    first, second = of_type(events, "deal.objections_recorded")
    assert [(o.key, o.text) for o in first.data.objections] == [(o["key"], o["text"]) for o in recorded]
    assert first.data.occurred_at == at and first.data.deal_id == uuid.UUID(open_deal["deal_id"])
    assert [(o.key, o.text) for o in second.data.objections] == [("timing", "Not now")]
    [loss] = of_type(events, "deal.lost")
    assert loss.data.objections == ["TOO EXPENSIVE.", "meh"]
    assert [(o.key, o.text) for o in loss.data.normalised_objections] == [("price", "TOO EXPENSIVE."), ("other", "meh")]


async def test_the_objections_vocabulary_is_readable(client):
    response = await client.get("/v1/objections")
    assert response.status_code == 200
    items = response.json()["items"]
    keys = [item["key"] for item in items]
    assert keys[-1] == "other" and len(keys) == len(set(keys))
    assert {"price", "budget", "timing", "competitor", "missing_feature", "no_decision_maker"} <= set(keys)
    price = next(item for item in items if item["key"] == "price")
    assert price["label"] == "Too expensive" and "pricey" in price["synonyms"]


async def test_a_vocabulary_of_its_own_counts_objections_its_way(
    make_settings, topics, topic_prefix, tmp_path, leads_out
):
    vocabulary = tmp_path / "objections.yaml"
    vocabulary.write_text("objections:\n  cost:\n    label: Precio\n    synonyms: [caro]\n")
    await ensure_topics(topics, ALL_TOPICS, prefix=topic_prefix)
    settings = await make_settings(
        SalesSettings, consumer_group=f"sales-{topic_prefix.rstrip('.')}", objections_config=vocabulary
    )
    async with serve(build_app(settings)) as client:
        client.headers.update(AUTH)
        assert [i["key"] for i in (await client.get("/v1/objections")).json()["items"]] == ["cost", "other"]
        _, deal = await handoff(client, leads_out)
        response = await client.post(
            f"/v1/deals/{deal['deal_id']}/objections", json={"objections": ["¡Caro!", "price"]}
        )
        assert [o["key"] for o in response.json()["recorded_objections"]] == ["cost", "other"]
