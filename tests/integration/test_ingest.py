"""The ingest service against the real broker: what is accepted reaches its topic, keyed
and shaped as the contract says; what is refused gets its 4xx and publishes nothing."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer

from services.ingest.main import build_app
from services.ingest.settings import IngestSettings
from shared.events import CampaignEvent, Envelope, FormSubmission, PageView
from shared.settings import DEV_WRITE_KEY
from shared.topics import CAMPAIGN_EVENTS, FORM_SUBMISSIONS, PAGE_VIEWS, ensure_topics
from tests.support import eventually, serve

pytestmark = pytest.mark.integration

KEY = "test-write-key"
OTHER_KEY = "other-write-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROBLEM = "application/problem+json"


def submission(email: str = "Ana.Lopez@Example.com", **fields) -> dict:
    return {
        "form_id": "demo-request",
        "email": email,
        "name": "Ana López",
        "phone": "+34 600 123 456",
        "utm": {"source": "google", "medium": "cpc", "campaign": "spring"},
        **fields,
    }


def click(campaign_id: str = "spring", **fields) -> dict:
    return {"campaign_id": campaign_id, "channel": "cpc", "event": "click", **fields}


def spend(amount="12.50", currency="EUR", **fields) -> dict:
    return {
        "campaign_id": "spring",
        "channel": "cpc",
        "event": "spend",
        "cost": {"amount": amount, "currency": currency},
        **fields,
    }


async def create_visible_topics(bootstrap: str, prefix: str) -> None:
    """Create this test's topics and wait until the broker's metadata lists them: a reader
    opened on a topic its metadata does not show yet would silently read nothing."""
    await ensure_topics(bootstrap, prefix=prefix)
    names = [prefix + topic.name for topic in (FORM_SUBMISSIONS, CAMPAIGN_EVENTS, PAGE_VIEWS)]
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:

        async def listed() -> bool:
            await probe._client.force_metadata_update()
            return all(probe.partitions_for_topic(name) for name in names)

        await eventually(listed, timeout=20)
    finally:
        await probe.stop()


@pytest.fixture
async def ingest_settings(make_settings, topics, topic_prefix):
    # The reader needs this test's topics before the service's own background creation runs.
    await create_visible_topics(topics, topic_prefix)

    async def make(**overrides) -> IngestSettings:
        values = {"write_keys": f"{KEY},{OTHER_KEY}", **overrides}
        return await make_settings(IngestSettings, database=False, **values)

    return make


@pytest.fixture
async def client(ingest_settings):
    async with serve(build_app(await ingest_settings())) as http:
        yield http


@pytest.fixture
async def forms(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + FORM_SUBMISSIONS.name)


@pytest.fixture
async def campaigns(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + CAMPAIGN_EVENTS.name)


@pytest.fixture
async def page_views(topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + PAGE_VIEWS.name)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    return body


def events_of(records) -> list[Envelope]:
    return [Envelope.from_bytes(record.value) for record in records]


def fields_of(problem: dict) -> list[str]:
    return sorted(e["field"] for e in problem["errors"])


async def nothing_before(reader, client, email: str) -> None:
    """Prove that a refused request published nothing: a valid submission with the same
    key lands on the same partition after anything the refused one might have written,
    so it must be the first record the reader sees."""
    sentinel = (await client.post("/v1/form-submissions", json=submission(email), headers=AUTH)).json()
    records = await reader.read_until(
        lambda r: any(str(Envelope.from_bytes(x.value).event_id) in sentinel["event_ids"] for x in r)
    )
    assert [str(Envelope.from_bytes(r.value).event_id) for r in records] == sentinel["event_ids"]


# --- happy paths ----------------------------------------------------------------------


async def test_a_form_submission_reaches_its_topic_keyed_by_normalised_email(client, forms, caplog):
    caplog.set_level(logging.DEBUG)
    occurred = datetime.now(UTC) - timedelta(minutes=3)
    response = await client.post(
        "/v1/form-submissions",
        json=submission(occurred_at=occurred.isoformat(), fields={"budget": "10k"}, page_url="https://x.test/"),
        headers=AUTH,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1 and len(body["event_ids"]) == 1

    [record] = await forms.read_until(lambda r: len(r) >= 1)
    assert record.key == b"ana.lopez@example.com"
    event = Envelope.from_bytes(record.value)
    assert str(event.event_id) == body["event_ids"][0]
    assert event.type == "form_submission" and event.source == "ingest"
    assert event.occurred_at == occurred
    assert isinstance(event.data, FormSubmission)
    assert event.data.email == "Ana.Lopez@Example.com"  # passed on as typed
    assert event.data.fields == {"budget": "10k"} and event.data.utm.campaign == "spring"
    assert "ana.lopez@example.com" not in caplog.text.lower() and "600 123 456" not in caplog.text


async def test_a_spend_reaches_its_topic_keyed_by_campaign_with_an_exact_decimal_amount(client, campaigns):
    response = await client.post("/v1/campaign-events", json=spend(amount=12.5), headers=AUTH)
    assert response.status_code == 202, response.text

    [record] = await campaigns.read_until(lambda r: len(r) >= 1)
    assert record.key == b"spring"
    raw = json.loads(record.value)
    assert raw["data"]["cost"] == {"amount": "12.50", "currency": "EUR"}  # a string, never a float
    event = Envelope.from_bytes(record.value)
    assert isinstance(event.data, CampaignEvent) and event.data.event == "spend"
    assert str(event.event_id) == response.json()["event_ids"][0]


async def test_impressions_count_defaults_to_one(client, campaigns):
    for body in (click(), {**click(), "event": "impression", "count": 250}):
        assert (await client.post("/v1/campaign-events", json=body, headers=AUTH)).status_code == 202
    records = await campaigns.read_until(lambda r: len(r) >= 2)
    counts = sorted((e.data.event, e.data.count) for e in events_of(records))
    assert counts == [("click", 1), ("impression", 250)]


async def test_a_count_of_66_0_is_json_schemas_integer_66(client, campaigns):
    response = await client.post("/v1/campaign-events", json={**click(), "count": 66.0}, headers=AUTH)
    assert response.status_code == 202, response.text
    [record] = await campaigns.read_until(lambda r: len(r) >= 1)
    assert json.loads(record.value)["data"]["count"] == 66
    for refused in (66.5, "66", True):
        problem = assert_problem(await client.post("/v1/campaign-events", json=click(count=refused), headers=AUTH), 422)
        assert fields_of(problem) == ["count"]


async def test_a_mixed_batch_lands_on_both_topics_with_the_ids_in_order(client, forms, campaigns):
    mine = str(uuid.uuid4())
    batch = [
        {"type": "form_submission", **submission("a@example.com")},
        {"type": "campaign_event", **click(event_id=mine)},
        {"type": "form_submission", **submission("b@example.com")},
        {"type": "campaign_event", **spend()},
    ]
    response = await client.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 4 and body["event_ids"][1] == mine

    form_events = events_of(await forms.read_until(lambda r: len(r) >= 2))
    campaign_events = events_of(await campaigns.read_until(lambda r: len(r) >= 2))
    assert {str(e.event_id): e.key for e in form_events} == {
        body["event_ids"][0]: "a@example.com",
        body["event_ids"][2]: "b@example.com",
    }
    assert {str(e.event_id) for e in campaign_events} == {body["event_ids"][1], body["event_ids"][3]}


async def test_the_same_event_id_twice_is_the_same_event_id_on_the_topic(client, campaigns):
    event_id = str(uuid.uuid4())
    for _ in range(2):  # a client retrying after a timeout
        response = await client.post("/v1/campaign-events", json=click(event_id=event_id), headers=AUTH)
        assert response.json()["event_ids"] == [event_id]
    records = await campaigns.read_until(lambda r: len(r) >= 2)
    assert [str(Envelope.from_bytes(r.value).event_id) for r in records] == [event_id, event_id]


async def test_a_page_view_reaches_its_topic_keyed_by_visitor_without_personal_url_parameters(client, page_views):
    url = "https://www.example.org/pricing?utm_source=google&utm_medium=cpc&utm_campaign=spring&email=ana%40x.es"
    response = await client.post(
        "/v1/page-views", json={"anonymous_id": "visitor-1", "url": url, "title": "Pricing"}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    [record] = await page_views.read_until(lambda r: len(r) >= 1)
    assert record.key == b"visitor-1"
    event = Envelope.from_bytes(record.value)
    assert str(event.event_id) == response.json()["event_ids"][0]
    assert isinstance(event.data, PageView)
    assert event.data.url == "https://www.example.org/pricing?utm_source=google&utm_medium=cpc&utm_campaign=spring"
    assert (event.data.utm.campaign, event.data.utm.medium, event.data.title) == ("spring", "cpc", "Pricing")
    assert b"ana%40x.es" not in record.value and b"ana@x.es" not in record.value


async def test_a_beacon_posts_a_page_view_as_text_plain_with_the_key_parameter(client, page_views):
    body = json.dumps({"anonymous_id": "visitor-2", "url": "https://www.example.org/"})
    response = await client.post(
        f"/v1/page-views?key={KEY}", content=body, headers={"Content-Type": "text/plain;charset=UTF-8"}
    )
    assert response.status_code == 202, response.text
    [record] = await page_views.read_until(lambda r: len(r) >= 1)
    assert Envelope.from_bytes(record.value).data.anonymous_id == "visitor-2"
    not_json = await client.post(f"/v1/page-views?key={KEY}", content=b"hello", headers={"Content-Type": "text/plain"})
    assert_problem(not_json, 400)


async def test_page_views_go_in_a_batch_next_to_submissions(client, forms, page_views):
    batch = [
        {"type": "page_view", "anonymous_id": "visitor-3", "url": "https://www.example.org/?utm_campaign=march"},
        {"type": "form_submission", **submission("c@example.com", anonymous_id="visitor-3")},
    ]
    response = await client.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert response.status_code == 202, response.text
    [view] = events_of(await page_views.read_until(lambda r: len(r) >= 1))
    [form] = events_of(await forms.read_until(lambda r: len(r) >= 1))
    assert [str(view.event_id), str(form.event_id)] == response.json()["event_ids"]
    assert view.data.utm.campaign == "march" and form.data.anonymous_id == "visitor-3"


# --- HTML forms -------------------------------------------------------------------------

FORM = {
    "form_id": "newsletter",
    "email": "Visitor@Example.org",
    "utm_source": "newsletter",
    "utm_medium": "email",
    "utm_campaign": "march",
    "company": "",
    "interest": "crm",
}


async def test_an_html_form_post_redirects_to_an_allowed_host(ingest_settings, forms):
    settings = await ingest_settings(allowed_redirect_hosts="www.example.org")
    async with serve(build_app(settings)) as client:
        response = await client.post(
            f"/v1/form-submissions?key={KEY}", data={**FORM, "redirect": "https://www.example.org/thanks"}
        )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "https://www.example.org/thanks"

    [record] = await forms.read_until(lambda r: len(r) >= 1)
    event = Envelope.from_bytes(record.value)
    assert record.key == b"visitor@example.org"
    assert event.data.form_id == "newsletter" and event.data.company is None  # blank input = absent
    utm = event.data.utm
    assert (utm.source, utm.medium, utm.campaign) == ("newsletter", "email", "march")
    assert event.data.fields == {"interest": "crm"}  # other inputs are kept, the redirect is not


@pytest.mark.parametrize("redirect", [None, "https://evil.test/phish"])
async def test_an_html_form_post_without_an_allowed_redirect_gets_202(ingest_settings, forms, redirect):
    settings = await ingest_settings(allowed_redirect_hosts="www.example.org")
    data = FORM if redirect is None else {**FORM, "redirect": redirect}
    async with serve(build_app(settings)) as client:
        response = await client.post(f"/v1/form-submissions?key={KEY}", data=data)
    assert response.status_code == 202, response.text
    assert "location" not in response.headers
    [record] = await forms.read_until(lambda r: len(r) >= 1)
    assert str(Envelope.from_bytes(record.value).event_id) == response.json()["event_ids"][0]


async def test_an_html_form_post_names_bad_inputs_by_their_form_names(client):
    response = await client.post(
        f"/v1/form-submissions?key={KEY}", data={"form_id": "f", "email": "nope", "utm_source": "x" * 201}
    )
    assert fields_of(assert_problem(response, 422)) == ["email", "utm_source"]
    response = await client.post("/v1/form-submissions", data=FORM)  # no ?key=
    assert_problem(response, 401)


async def test_an_html_form_posts_at_most_50_inputs_besides_form_id_and_email(client, forms):
    fifty = {f"question_{i}": "yes" for i in range(50)}
    response = await client.post(
        f"/v1/form-submissions?key={KEY}", data={"form_id": "long", "email": "long@example.org", **fifty}
    )
    assert response.status_code == 202, response.text
    [record] = await forms.read_until(lambda r: len(r) >= 1)
    assert Envelope.from_bytes(record.value).data.fields == fifty
    # One more input, blank or not, named or not, is one too many: the count the document states.
    for extra in ({"name": ""}, {"question_50": ""}, {"utm_source": "x"}):
        data = {"form_id": "long", "email": "long@example.org", **fifty, **extra}
        problem = assert_problem(await client.post(f"/v1/form-submissions?key={KEY}", data=data), 422)
        assert [(e["field"], e["type"]) for e in problem["errors"]] == [("body", "too_many_inputs")]


async def test_an_html_form_input_with_a_nameless_or_nul_name_is_422_even_blank(client):
    for name in ("", "bad\x00name"):
        data = {"form_id": "f", "email": "ana@example.org", name: ""}
        problem = assert_problem(await client.post(f"/v1/form-submissions?key={KEY}", data=data), 422)
        assert [e["type"] for e in problem["errors"]] == ["name"]


async def test_a_multipart_form_post_is_accepted_and_a_broken_one_is_400_malformed_form(client, forms):
    fields = {"form_id": (None, "newsletter"), "email": (None, "multi@example.org"), "interest": (None, "crm")}
    response = await client.post(f"/v1/form-submissions?key={KEY}", files=fields)
    assert response.status_code == 202, response.text
    [record] = await forms.read_until(lambda r: len(r) >= 1)
    assert Envelope.from_bytes(record.value).data.fields == {"interest": "crm"}
    broken = await client.post(
        f"/v1/form-submissions?key={KEY}", content=b"form_id=x", headers={"Content-Type": "multipart/form-data"}
    )
    assert assert_problem(broken, 400)["title"] == "Malformed form"


async def test_every_event_id_spelling_the_document_names_is_read_as_that_uuid(client):
    event_id = uuid.uuid4()
    for spelling in (str(event_id), event_id.hex, f"{{{event_id}}}", event_id.urn):
        response = await client.post("/v1/campaign-events", json=click(event_id=spelling), headers=AUTH)
        assert response.json()["event_ids"] == [str(event_id)]


async def test_cors_preflight_is_answered_for_configured_origins_only(ingest_settings):
    settings = await ingest_settings(cors_origins="https://www.example.org")
    async with serve(build_app(settings)) as client:

        def preflight(origin: str):
            return client.options(
                "/v1/form-submissions",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )

        allowed = await preflight("https://www.example.org")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://www.example.org"
        refused = await preflight("https://evil.test")
        assert "access-control-allow-origin" not in refused.headers
        posted = await client.post(
            "/v1/campaign-events", json=click(), headers={**AUTH, "Origin": "https://www.example.org"}
        )
        assert posted.status_code == 202
        assert posted.headers["access-control-allow-origin"] == "https://www.example.org"


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}])
async def test_a_missing_or_unknown_write_key_is_401(client, headers):
    response = await client.post("/v1/campaign-events", json=click(), headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_every_configured_key_and_the_key_parameter_are_accepted(client):
    for kwargs in ({"headers": {"Authorization": f"Bearer {OTHER_KEY}"}}, {"params": {"key": KEY}}):
        assert (await client.post("/v1/campaign-events", json=click(), **kwargs)).status_code == 202


async def test_the_dev_key_works_only_in_dev(ingest_settings):
    async with serve(build_app(await ingest_settings(env="dev", write_keys=""))) as client:
        response = await client.post(
            "/v1/campaign-events", json=click(), headers={"Authorization": f"Bearer {DEV_WRITE_KEY}"}
        )
        assert response.status_code == 202
    with pytest.raises(SystemExit, match="EMBUDO_WRITE_KEYS"):
        build_app(await ingest_settings(env="prod", write_keys=""))


@pytest.mark.parametrize("path", ["/v1/form-submissions", "/v1/campaign-events", "/v1/batch"])
async def test_malformed_json_is_400(client, path):
    for raw in (b'{"form_id": ', b"\xff\xfe", b""):
        response = await client.post(path, content=raw, headers={**AUTH, "Content-Type": "application/json"})
        assert assert_problem(response, 400)["title"] == "Malformed JSON"


async def test_a_request_over_512_kb_is_413(client):
    batch = [{"type": "form_submission", **submission(fields={"note": "x" * 20_000})}] * 30
    response = await client.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert_problem(response, 413)


async def test_an_event_over_32_kb_is_413_and_its_batch_publishes_nothing(client, forms):
    big = submission("big@example.com", fields={"note": "x" * 33_000})
    assert_problem(await client.post("/v1/form-submissions", json=big, headers=AUTH), 413)
    batch = [{"type": "form_submission", **submission("big@example.com")}, {"type": "form_submission", **big}]
    problem = assert_problem(await client.post("/v1/batch", json={"batch": batch}, headers=AUTH), 413)
    assert problem["items"] == [1]
    await nothing_before(forms, client, "big@example.com")


async def test_an_unsupported_content_type_is_415(client):
    response = await client.post(
        "/v1/campaign-events", content=json.dumps(click()), headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert_problem(response, 415)
    response = await client.post("/v1/batch", data={"batch": "x"}, headers=AUTH)
    assert_problem(response, 415)
    response = await client.post(
        "/v1/form-submissions", content=b"<xml/>", headers={**AUTH, "Content-Type": "application/xml"}
    )
    assert_problem(response, 415)


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        ("/v1/form-submissions", {"form_id": "", "email": "not-an-email"}, ["email", "form_id"]),
        ("/v1/form-submissions", {**submission(), "utm": {"source": 3, "campain": "x"}}, ["utm.campain", "utm.source"]),
        ("/v1/form-submissions", {**submission(), "fields": {"a": 1}}, ["fields.a"]),
        ("/v1/form-submissions", [submission()], ["body"]),
        # NUL: no consumer's database could store it, so the event would never be applied.
        (
            "/v1/form-submissions",
            {**submission(name="Ana\x00"), "utm": {"campaign": "spring\x00"}, "fields": {"budget": "\x00"}},
            ["fields.budget", "name", "utm.campaign"],
        ),
        ("/v1/campaign-events", {"channel": "cpc", "event": "view"}, ["campaign_id", "event"]),
        ("/v1/campaign-events", click(count=0), ["count"]),
        ("/v1/campaign-events", click(event_id="not-a-uuid"), ["event_id"]),
        ("/v1/campaign-events", click(campaign_id="spring\x00"), ["campaign_id"]),
    ],
)
async def test_invalid_fields_are_422_with_their_paths(client, path, body, fields):
    problem = assert_problem(await client.post(path, json=body, headers=AUTH), 422)
    assert fields_of(problem) == fields
    assert all(e["message"] for e in problem["errors"])


@pytest.mark.parametrize(
    ("body", "field", "error_type"),
    [
        (click(occurred_at="2025-03-01T10:00:00"), "occurred_at", "timezone_aware"),
        # a day ahead: the list is built at collection, which may be many minutes before the test runs
        (click(occurred_at=(datetime.now(UTC) + timedelta(days=1)).isoformat()), "occurred_at", "future_timestamp"),
        (click(occurred_at="1970-01-01T00:00:00Z"), "occurred_at", "timestamp_too_old"),
        (click(occurred_at=1700000000), "occurred_at", "datetime_format"),  # RFC 3339 only, as documented
        (click(occurred_at="1700000000"), "occurred_at", "datetime_format"),
        (spend(currency="USD"), "cost.currency", "currency_mismatch"),
        ({**click(), "cost": {"amount": "1.00", "currency": "EUR"}}, "cost", "cost_refused"),
        ({**spend(), "cost": None}, "cost", "cost_required"),
        (spend(amount="9.999"), "cost.amount", "decimal_max_places"),
        (spend(amount="-1"), "cost.amount", "greater_than_equal"),
        (spend(amount="NaN"), "cost.amount", "decimal_format"),
        (spend(amount="1E+2"), "cost.amount", "decimal_format"),  # plain decimals only, as documented
        (spend(amount="12.500"), "cost.amount", "decimal_format"),
    ],
)
async def test_campaign_rules_are_422_naming_the_field(client, body, field, error_type):
    problem = assert_problem(await client.post("/v1/campaign-events", json=body, headers=AUTH), 422)
    assert [(e["field"], e["type"]) for e in problem["errors"]] == [(field, error_type)]


async def test_a_currency_mismatch_says_which_currency_is_expected(client):
    response = await client.post("/v1/campaign-events", json=spend(currency="USD"), headers=AUTH)
    problem = assert_problem(response, 422)
    assert "EUR" in problem["errors"][0]["message"]


async def test_a_batch_with_one_bad_item_publishes_nothing_and_lists_each_bad_item(client, forms):
    batch = [
        {"type": "form_submission", **submission("keep@example.com")},
        {"type": "campaign_event", **click(), "cost": {"amount": "1", "currency": "EUR"}},
        {"type": "form_submission", **submission("keep@example.com")},
        {"type": "lead", "form_id": "x"},
        {"type": "form_submission", **submission("not-an-email")},
    ]
    problem = assert_problem(await client.post("/v1/batch", json={"batch": batch}, headers=AUTH), 422)
    listed = [(item["index"], fields_of(item)) for item in problem["items"]]
    assert listed == [(1, ["cost"]), (3, ["type"]), (4, ["email"])]
    await nothing_before(forms, client, "keep@example.com")


async def test_a_batch_needs_one_to_five_hundred_items(client):
    item = {"type": "campaign_event", **click()}
    for size in (0, 501):
        response = await client.post("/v1/batch", json={"batch": [item] * size}, headers=AUTH)
        problem = assert_problem(response, 422)
        assert fields_of(problem) == ["batch"] and problem["items"] == []
    response = await client.post("/v1/batch", json={"batch": [item] * 500}, headers=AUTH)
    assert response.json()["accepted"] == 500


async def test_a_key_over_its_rate_gets_429_with_retry_after_but_other_keys_do_not(ingest_settings, campaigns):
    # 2 events of burst, refilled at one every 1000 s: the third must wait.
    settings = await ingest_settings(rate_limit_per_second=0.001, rate_limit_burst=2)
    async with serve(build_app(settings)) as client:
        first = await client.post("/v1/campaign-events", json=click(), headers=AUTH)
        second = await client.post("/v1/campaign-events", json=click(), headers=AUTH)
        assert (first.status_code, second.status_code) == (202, 202)
        limited = await client.post("/v1/campaign-events", json=click(), headers=AUTH)
        assert_problem(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 1000
        other = await client.post("/v1/campaign-events", json=click(), headers={"Authorization": f"Bearer {OTHER_KEY}"})
        assert other.status_code == 202
    records = await campaigns.read_until(lambda r: len(r) >= 3)
    published = {str(Envelope.from_bytes(r.value).event_id) for r in records}
    assert published == {*first.json()["event_ids"], *second.json()["event_ids"], *other.json()["event_ids"]}


async def test_processes_sharing_a_limit_each_enforce_their_share(ingest_settings):
    # 4 events of burst shared by two processes: each admits 2, so the pair admits 4.
    settings = await ingest_settings(rate_limit_per_second=0.001, rate_limit_burst=4, rate_limit_processes=2)
    statuses = []
    for _ in range(2):
        async with serve(build_app(settings)) as client:
            statuses += [(await client.post("/v1/campaign-events", json=click(), headers=AUTH)).status_code
                         for _ in range(3)]  # fmt: skip
    assert statuses == [202, 202, 429, 202, 202, 429]


async def test_a_batch_costs_one_token_per_event(ingest_settings):
    settings = await ingest_settings(rate_limit_per_second=0.001, rate_limit_burst=3)
    item = {"type": "campaign_event", **click()}
    async with serve(build_app(settings)) as client:
        assert (await client.post("/v1/batch", json={"batch": [item] * 3}, headers=AUTH)).status_code == 202
        assert_problem(await client.post("/v1/campaign-events", json=click(), headers=AUTH), 429)
