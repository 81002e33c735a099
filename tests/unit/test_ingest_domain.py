"""Ingest's pure rules: validation, events and keys, HTML forms, redirects, the rate limit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services.ingest.domain import (
    HTTP_URL_PATTERN,
    MAX_FORM_INPUTS,
    BatchInput,
    CampaignEventInput,
    EventId,
    FormSubmissionInput,
    PageViewInput,
    RateLimiter,
    TokenBucket,
    context,
    form_field_path,
    form_input_errors,
    form_to_input,
    is_valid_email,
    item_errors,
    safe_redirect,
    to_envelope,
)
from shared.events import CampaignEvent, FormSubmission, PageView, Utm
from shared.topics import CAMPAIGN_EVENTS, FORM_SUBMISSIONS, PAGE_VIEWS

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CTX = context("EUR", NOW)


def campaign(**fields) -> CampaignEventInput:
    raw = {"campaign_id": "spring", "channel": "cpc", **fields}
    return CampaignEventInput.model_validate(raw, context=CTX)


def errors_of(call) -> list[tuple[str, ...]]:
    with pytest.raises(ValidationError) as caught:
        call()
    return [(tuple(map(str, e["loc"])), e["type"]) for e in caught.value.errors()]


@pytest.mark.parametrize(
    "email", ["ana@example.com", "Ana.Lopez+news@Example.co.uk", "jörg@bücher.de", " ana@example.com\n"]
)
def test_plausible_emails_are_valid(email):
    assert is_valid_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ana",
        "ana@",
        "@example.com",
        "ana@example",
        "ana@@example.com",
        "ana @example.com",
        "a@b.",
        "x" * 250 + "@example.com",
    ],
)
def test_implausible_emails_are_not(email):
    assert not is_valid_email(email)


# What str.strip() removes, and characters ECMA's \s counts as white space but Python's does not.
_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_EMAIL_SCHEMA = jsonschema_rs.validator_for(FormSubmissionInput.model_json_schema()["properties"]["email"])


@pytest.mark.parametrize(
    "email",
    [
        "ana@example.com",
        " \x1cana@example.com\u3000",  # trimmed: \x1c is white space to Python, not to ECMA
        "\ufeffana@example.com",  # \ufeff is no white space to Python: part of the address
        "ana..lopez@example.com",  # not RFC 5321 (format: email refuses it), but ingest's rule
        "ana@localhost",  # the other way round: RFC 5321 takes it, ingest does not
        "a b@example.com",
        " " * 20 + "a" * 249 + "@b.co",  # 254 once trimmed
        "a" * 250 + "@b.co",
    ],
)
def test_the_documents_email_schema_is_ingests_email_rule(email):
    assert _EMAIL_SCHEMA.is_valid(email) == is_valid_email(email)


# too_slow: st.emails() builds its domain strategy on first use (seconds on a busy CI
# machine); that is setup cost, not what this property is about.
@given(st.text(st.sampled_from([*_SPACES, *"ab.@\x00\x7f"]), max_size=16) | st.emails())
@settings(max_examples=500, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_documents_email_schema_agrees_with_ingest_on_any_text(email):
    assert _EMAIL_SCHEMA.is_valid(email) == is_valid_email(email)


def _reads_as_uuid(text: str) -> bool:
    try:
        TypeAdapter(EventId).validate_python(text)
    except ValidationError:
        return False
    return True


_EVENT_ID_SCHEMA = jsonschema_rs.validator_for(TypeAdapter(EventId).json_schema(), validate_formats=True)


@given(
    st.uuids().flatmap(
        lambda u: st.sampled_from([str(u), u.hex, f"{{{u}}}", u.urn, str(u).upper(), u.urn.upper(), f"{{{u.hex}}}"])
    )
    | st.text("0123456789abcdef-{}:nuri", max_size=45)
)
@settings(max_examples=500, database=None)
def test_the_documents_event_id_spellings_are_the_ones_ingest_reads(text):
    assert _EVENT_ID_SCHEMA.is_valid(text) == _reads_as_uuid(text)


def test_a_submission_is_keyed_by_normalised_email_and_keeps_the_email_as_typed():
    item = FormSubmissionInput.model_validate(
        {"form_id": "demo", "email": " Ana@Example.COM", "utm": {"campaign": "spring", "medium": "cpc"}},
        context=CTX,
    )
    topic, envelope = to_envelope(item, NOW)
    assert topic == FORM_SUBMISSIONS
    assert envelope.key == "ana@example.com"
    assert isinstance(envelope.data, FormSubmission)
    assert envelope.data.email == " Ana@Example.COM"
    assert envelope.data.utm.campaign == "spring"
    assert envelope.occurred_at == NOW and envelope.source == "ingest"


def test_the_clients_event_id_and_time_are_kept_in_utc():
    event_id = uuid.uuid4()
    madrid = datetime(2025, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    item = campaign(event="click", event_id=str(event_id), occurred_at=madrid.isoformat())
    topic, envelope = to_envelope(item, NOW)
    assert topic == CAMPAIGN_EVENTS and envelope.key == "spring"
    assert envelope.event_id == event_id
    assert envelope.occurred_at == madrid and envelope.occurred_at.tzinfo == UTC


def test_without_an_event_id_each_event_gets_a_new_one():
    item = campaign(event="impression", count=3)
    assert to_envelope(item, NOW)[1].event_id != to_envelope(item, NOW)[1].event_id


def test_naive_and_future_timestamps_are_refused_but_small_clock_skew_is_not():
    assert errors_of(lambda: campaign(event="click", occurred_at="2025-03-01T12:00:00")) == [
        (("occurred_at",), "timezone_aware")
    ]
    too_far = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    assert errors_of(lambda: campaign(event="click", occurred_at=too_far)) == [(("occurred_at",), "future_timestamp")]
    assert campaign(event="click", occurred_at=(NOW + timedelta(minutes=4)).isoformat())


def test_occurred_at_is_rfc_3339_never_unix_seconds():
    for unix in (1700000000, "1700000000", 0.5):
        refused = errors_of(lambda t=unix: campaign(event="click", occurred_at=t))
        assert refused == [(("occurred_at",), "datetime_format")]


def test_times_before_2000_are_refused_as_unset_clocks_or_typos():
    # 00:30 at +01:00 on New Year's Day 2000 is still 1999 in UTC.
    for implausible in ("1970-01-01T00:00:00Z", "0202-03-01T10:00:00+01:00", "2000-01-01T00:30:00+01:00"):
        assert errors_of(lambda t=implausible: campaign(event="click", occurred_at=t)) == [
            (("occurred_at",), "timestamp_too_old")
        ]
    assert campaign(event="click", occurred_at="2000-01-01T00:00:00Z")


def test_spend_needs_a_cost_in_the_configured_currency_with_at_most_two_decimals():
    spend = campaign(event="spend", cost={"amount": 100, "currency": "EUR"})
    data = to_envelope(spend, NOW)[1].data
    assert isinstance(data, CampaignEvent)
    assert data.cost is not None and str(data.cost.amount) == "100.00" and data.cost.currency == "EUR"
    assert isinstance(data.cost.amount, Decimal)

    assert errors_of(lambda: campaign(event="spend")) == [(("cost",), "cost_required")]
    assert errors_of(lambda: campaign(event="spend", cost={"amount": "1.00", "currency": "USD"})) == [
        (("cost", "currency"), "currency_mismatch")
    ]
    assert errors_of(lambda: campaign(event="spend", cost={"amount": "1.005", "currency": "EUR"})) == [
        (("cost", "amount"), "decimal_max_places")
    ]
    for unwritten in ("1E+2", "12.500", "-0", "+1", " 1", "NaN"):  # a plain decimal, as the document says
        assert errors_of(lambda a=unwritten: campaign(event="spend", cost={"amount": a, "currency": "EUR"})) == [
            (("cost", "amount"), "decimal_format")
        ]
    assert errors_of(lambda: campaign(event="spend", cost={"amount": -1, "currency": "EUR"})) == [
        (("cost", "amount"), "greater_than_equal")
    ]
    assert errors_of(lambda: campaign(event="spend", count=2, cost={"amount": 1, "currency": "EUR"})) == [
        (("count",), "count_on_spend")
    ]


def test_a_json_number_amount_is_read_exactly_not_as_a_float():
    spend = CampaignEventInput.model_validate_json(
        '{"campaign_id": "c", "channel": "cpc", "event": "spend", "cost": {"amount": 0.1, "currency": "EUR"}}',
        context=CTX,
    )
    assert spend.cost is not None and spend.cost.amount == Decimal("0.1")


def test_impressions_and_clicks_refuse_a_cost_and_count_at_least_one():
    assert errors_of(lambda: campaign(event="click", cost={"amount": "1", "currency": "EUR"})) == [
        (("cost",), "cost_refused")
    ]
    assert errors_of(lambda: campaign(event="impression", count=0)) == [(("count",), "greater_than_equal")]
    assert errors_of(lambda: campaign(event="impression", count="5")) == [(("count",), "int_type")]
    assert campaign(event="impression").count == 1


def test_count_is_json_schemas_integer_so_66_0_is_66():
    assert campaign(event="impression", count=66.0).count == 66
    counted = CampaignEventInput.model_validate_json(
        '{"campaign_id": "c", "channel": "cpc", "event": "click", "count": 1e3}', context=CTX
    )
    assert counted.count == 1000 and isinstance(counted.count, int)
    assert campaign(event="spend", count=1.0, cost={"amount": "1", "currency": "EUR"}).count == 1
    assert errors_of(lambda: campaign(event="impression", count=66.5)) == [(("count",), "int_from_float")]
    for not_a_number in (True, "66", None):
        assert errors_of(lambda c=not_a_number: campaign(event="impression", count=c)) == [(("count",), "int_type")]


def test_unknown_fields_and_too_many_custom_fields_are_refused():
    base = {"form_id": "demo", "email": "ana@example.com"}
    assert errors_of(lambda: FormSubmissionInput.model_validate({**base, "emial": "x"}, context=CTX)) == [
        (("emial",), "extra_forbidden")
    ]
    many = {f"f{i}": "v" for i in range(51)}
    assert errors_of(lambda: FormSubmissionInput.model_validate({**base, "fields": many}, context=CTX)) == [
        (("fields",), "too_long")
    ]


def test_batch_errors_are_grouped_by_item_with_paths_inside_the_item():
    raw = {
        "batch": [
            {"type": "form_submission", "form_id": "demo", "email": "ana@example.com"},
            {
                "type": "campaign_event",
                "campaign_id": "c",
                "channel": "cpc",
                "event": "click",
                "cost": {"amount": "1", "currency": "EUR"},
            },
            {"form_id": "demo"},
            {"type": "form_submission", "form_id": "", "email": "nope", "utm": {"source": 1}},
        ]
    }
    with pytest.raises(ValidationError) as caught:
        BatchInput.model_validate(raw, context=CTX)
    items, rest = item_errors(caught.value.errors())
    assert rest == []
    assert [(i["index"], sorted(e["field"] for e in i["errors"])) for i in items] == [
        (1, ["cost"]),
        (2, ["type"]),
        (3, ["email", "form_id", "utm.source"]),
    ]


def test_batch_size_is_one_to_five_hundred():
    item = {"type": "campaign_event", "campaign_id": "c", "channel": "cpc", "event": "click"}
    assert len(BatchInput.model_validate({"batch": [item] * 500}, context=CTX).batch) == 500
    for size in (0, 501):
        with pytest.raises(ValidationError) as caught:
            BatchInput.model_validate({"batch": [item] * size}, context=CTX)
        items, rest = item_errors(caught.value.errors())
        assert items == [] and [e["field"] for e in rest] == ["batch"]


def test_an_html_form_posts_form_id_email_and_at_most_50_more_inputs_blank_ones_included():
    required = [("form_id", "demo"), ("email", "ana@example.com")]
    fifty = [(f"q{i}", "") for i in range(MAX_FORM_INPUTS - 2)]
    assert form_input_errors(required + fifty) == []
    assert form_input_errors(required + fifty + [("q0", "again")]) == []  # a checkbox group is one input
    [refused] = form_input_errors(required + fifty + [("name", "")])
    assert (refused["field"], refused["type"]) == ("body", "too_many_inputs")


@pytest.mark.parametrize("name", ["", "x" * 101, "a\x00"])
def test_an_html_form_input_name_must_be_one_to_100_characters_without_nul_even_when_blank(name):
    for value in ("", "x"):
        [refused] = form_input_errors([("form_id", "demo"), ("email", "ana@example.com"), (name, value)])
        assert refused["type"] == "name"
    assert form_input_errors([("x" * 100, "")]) == []


def test_an_html_form_maps_to_the_json_shape():
    body, redirect = form_to_input(
        [
            ("form_id", "demo"),
            ("email", "ana@example.com"),
            ("name", ""),
            ("utm_source", "google"),
            ("utm_campaign", "spring"),
            ("budget", "10k"),
            ("interest", "crm"),
            ("interest", "ads"),
            ("redirect", "https://example.com/thanks"),
            ("key", "leaked?"),
        ]
    )
    assert body == {
        "form_id": "demo",
        "email": "ana@example.com",
        "utm": {"source": "google", "campaign": "spring"},
        "fields": {"budget": "10k", "interest": "crm, ads"},
    }
    assert redirect == "https://example.com/thanks"
    assert form_field_path(("utm", "source")) == "utm_source"
    assert form_field_path(("fields", "budget")) == "budget"
    assert form_field_path(("email",)) == "email"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://example.com/thanks", True),
        ("http://EXAMPLE.com/thanks?x=1", True),
        ("https://evil.test/", False),
        ("https://example.com.evil.test/", False),
        ("javascript://example.com/%0aalert(1)", False),
        ("//example.com/thanks", False),
        ("https://evil.test\\@example.com/", False),
        ("https://user@example.com/", False),
        ("https://example.com/\nLocation: x", False),
        ("", False),
        (None, False),
    ],
)
def test_only_http_redirects_to_allowed_hosts_are_followed(url, allowed):
    followed = safe_redirect(url, frozenset({"example.com"}))
    assert followed == (url if allowed else None)


def test_no_redirect_host_allowed_means_no_redirect():
    assert safe_redirect("https://example.com/", frozenset()) is None


def test_token_bucket_admits_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(1, 0.0) == pytest.approx(0.5)  # one token comes back in half a second
    assert bucket.take(1, 0.5) == 0


def test_a_fraction_of_a_token_admits_nothing():
    bucket = TokenBucket(rate=0.001, burst=1, now=0.0)
    assert bucket.take(1, 0.0) == 0
    assert bucket.take(1, 5.0) == pytest.approx(995.0)


def test_a_batch_larger_than_what_is_left_passes_and_its_debt_delays_the_next():
    bucket = TokenBucket(rate=10, burst=100, now=0.0)
    assert bucket.take(150, 0.0) == 0  # 50 in debt
    assert bucket.take(1, 0.0) == pytest.approx(5.1)
    assert bucket.take(1, 5.2) == 0


def test_rate_limiter_keeps_one_bucket_per_key_and_reports_whole_seconds():
    limiter = RateLimiter(rate=0.5, burst=1)
    assert limiter.take("a", 1, 0.0) == 0
    assert limiter.take("a", 1, 0.0) == 2
    assert limiter.take("b", 1, 0.0) == 0
    assert RateLimiter(rate=0, burst=0).take("a", 10_000, 0.0) == 0  # turned off


# --- page views -------------------------------------------------------------------------


def page_view(**fields) -> PageViewInput:
    return PageViewInput.model_validate({"anonymous_id": "v-1", "url": "https://shop.example/", **fields}, context=CTX)


def test_a_page_view_keeps_only_the_utm_parameters_of_its_url_and_reads_its_utm_from_them():
    view = page_view(
        url="https://Shop.Example/pricing?email=ana%40example.com&utm_source=google&utm_campaign=spring+sale"
        "&utm_medium=cpc&token=secret#section"
    )
    topic, envelope = to_envelope(view, NOW)
    assert topic is PAGE_VIEWS and envelope.key == "v-1"
    assert isinstance(envelope.data, PageView)
    assert envelope.data.url == "https://shop.example/pricing?utm_source=google&utm_campaign=spring+sale&utm_medium=cpc"
    assert envelope.data.utm == Utm(source="google", medium="cpc", campaign="spring sale")
    assert envelope.data.has_utm


def test_a_given_utm_wins_over_the_urls_and_a_referrer_loses_its_query():
    view = page_view(
        url="https://shop.example/?utm_campaign=from-url",
        utm={"campaign": "given"},
        referrer="https://www.google.com/search?q=ana+lopez+email#top",
    )
    data = to_envelope(view, NOW)[1].data
    assert data.utm == Utm(campaign="given")
    assert data.referrer == "https://www.google.com/search"


def test_a_page_view_without_utm_has_none_and_an_empty_referrer_is_none():
    data = to_envelope(page_view(referrer=""), NOW)[1].data
    assert data.utm == Utm() and not data.has_utm and data.referrer is None


def test_utm_values_from_a_url_are_cut_to_their_limit_and_unstorable_ones_dropped():
    data = to_envelope(page_view(url=f"https://a.example/?utm_term={'x' * 300}&utm_content=a%00b"), NOW)[1].data
    assert data.utm.term == "x" * 200 and data.utm.content is None


@pytest.mark.parametrize(
    "url", ["ftp://a.example/", "/relative/path", "https://", "https://user:pw@a.example/", "https://a.example/a b"]
)
def test_a_page_view_url_must_be_absolute_http_without_user_info(url):
    with pytest.raises(ValidationError) as refused:
        page_view(url=url)
    assert [e["loc"] for e in refused.value.errors()] == [("url",)]


@pytest.mark.parametrize("anonymous_id", ["", "x" * 65])
def test_an_anonymous_id_has_1_to_64_characters(anonymous_id):
    with pytest.raises(ValidationError):
        page_view(anonymous_id=anonymous_id)


@pytest.mark.parametrize(
    "url", ["https://a.example", "HTTP://a-b.example:8080/x?y=1#z", "https://a.example/ñ", "https://-a/", "http://a\tb"]
)
def test_the_url_pattern_means_the_same_to_the_document_and_to_the_model(url):
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": HTTP_URL_PATTERN})
    try:
        page_view(url=url)
        accepted = True
    except ValidationError:
        accepted = False
    assert validator.is_valid(url) == accepted


def test_page_views_go_in_batches_with_their_type():
    batch = BatchInput.model_validate(
        {"batch": [{"type": "page_view", "anonymous_id": "v-1", "url": "https://a.example/"}]}, context=CTX
    )
    assert isinstance(batch.batch[0], PageViewInput)
