"""Segment messages mapped onto ingest's inputs: which message becomes which event with
which fields, which is ignored, which is skipped and why; event ids and clock correction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.domain import FormSubmissionInput, PageViewInput, context, to_envelope
from services.ingest.segment_mapping import (
    IDENTIFY_FORM_ID,
    MessageMapper,
    casefolded,
    event_id_of,
    occurred_at,
    parse_time,
)
from shared.events import FormSubmission, PageView
from shared.rules import CLOCK_SKEW
from shared.topics import FORM_SUBMISSIONS, PAGE_VIEWS

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KEY = "write-key"


def mapper(**overrides) -> MessageMapper:
    values = {
        "write_key": KEY,
        "form_events": casefolded(["Form Submitted", "Signed Up"]),
        "received_at": NOW,
        "validation_context": context("EUR", NOW),
        "max_message_bytes": 32 * 1024,
        **overrides,
    }
    return MessageMapper(**values)


def page(**fields) -> dict:
    return {"type": "page", "anonymousId": "visitor-1", "properties": {"url": "https://www.example.com/"}, **fields}


def identify(**traits) -> dict:
    return {"type": "identify", "anonymousId": "visitor-1", "traits": {"email": "ana@example.com", **traits}}


# --- page -------------------------------------------------------------------------------


def test_a_page_is_a_page_view_with_url_referrer_title_and_campaign():
    message = page(
        properties={"url": "https://www.example.com/pricing?utm_source=ignored&q=x", "title": "Pricing"},
        context={
            "page": {"referrer": "https://www.google.com/search?q=embudo"},
            "campaign": {"name": "spring", "source": "google", "medium": "cpc", "term": "crm", "content": "a"},
        },
    )
    outcome = mapper().map(message)
    assert outcome.type == "page" and outcome.skipped is None
    assert isinstance(outcome.input, PageViewInput)
    topic, envelope = to_envelope(outcome.input, NOW)
    assert topic is PAGE_VIEWS and envelope.key == "visitor-1"
    assert isinstance(envelope.data, PageView)
    assert envelope.data.url == "https://www.example.com/pricing?utm_source=ignored"  # the native rules apply
    assert envelope.data.referrer == "https://www.google.com/search"
    assert envelope.data.title == "Pricing"
    utm = envelope.data.utm
    assert (utm.campaign, utm.source, utm.medium, utm.term, utm.content) == ("spring", "google", "cpc", "crm", "a")


def test_a_page_without_campaign_reads_utm_from_its_url_and_falls_back_to_context_page_and_user_id():
    message = {
        "type": "page",
        "userId": 42,
        "context": {"page": {"url": "https://www.example.com/?utm_campaign=autumn&utm_medium=email"}},
    }
    outcome = mapper().map(message)
    _, envelope = to_envelope(outcome.input, NOW)
    assert envelope.key == "42"
    assert (envelope.data.utm.campaign, envelope.data.utm.medium) == ("autumn", "email")


def test_a_campaign_with_nothing_usable_leaves_the_urls_utm():
    message = page(
        properties={"url": "https://www.example.com/?utm_campaign=autumn"},
        context={"campaign": {"name": "  ", "source": "a\x00b", "id": "x"}},
    )
    _, envelope = to_envelope(mapper().map(message).input, NOW)
    assert envelope.data.utm.campaign == "autumn"


def test_an_overlong_campaign_value_is_cut_like_a_urls():
    message = page(context={"campaign": {"name": "x" * 300}})
    assert mapper().map(message).input.utm.campaign == "x" * 200


@pytest.mark.parametrize(
    "message",
    [
        {"type": "page", "properties": {"url": "https://www.example.com/"}},  # no visitor
        {"type": "page", "anonymousId": "visitor-1"},  # no url
        {"type": "page", "anonymousId": "", "userId": None, "properties": {"url": "https://x.test/"}},
    ],
)
def test_a_page_without_visitor_or_url_is_unmapped(message):
    outcome = mapper().map(message)
    assert (outcome.input, outcome.skipped) == (None, "unmapped")


@pytest.mark.parametrize(
    "message",
    [
        page(properties={"url": "ftp://www.example.com/"}),
        page(properties={"url": "https://user:pw@www.example.com/"}),
        page(anonymousId="v" * 65),
        page(properties={"url": "https://www.example.com/", "title": "t" * 501}),
    ],
)
def test_a_page_the_native_api_would_refuse_is_invalid(message):
    assert mapper().map(message).skipped == "invalid"


# --- identify ---------------------------------------------------------------------------


def test_an_identify_with_an_email_is_a_form_submission_with_its_traits():
    message = identify(
        name="Ana López",
        phone=34600123456,
        company={"name": "Acme", "employees": 12},
        plan="pro",
        seats=5,
        trial=True,
        address={"city": "Madrid"},
        nothing=None,
    )
    message["context"] = {
        "page": {"url": "https://www.example.com/signup", "referrer": "https://news.test/"},
        "campaign": {"name": "spring", "medium": "cpc"},
    }
    outcome = mapper().map(message)
    assert outcome.type == "identify" and isinstance(outcome.input, FormSubmissionInput)
    topic, envelope = to_envelope(outcome.input, NOW)
    assert topic is FORM_SUBMISSIONS and envelope.key == "ana@example.com"
    data = envelope.data
    assert isinstance(data, FormSubmission)
    assert (data.form_id, data.email, data.name, data.phone, data.company) == (
        IDENTIFY_FORM_ID,
        "ana@example.com",
        "Ana López",
        "34600123456",
        "Acme",
    )
    assert data.anonymous_id == "visitor-1"  # links the visitor to the lead downstream
    assert (data.page_url, data.referrer) == ("https://www.example.com/signup", "https://news.test/")
    assert (data.utm.campaign, data.utm.medium) == ("spring", "cpc")
    assert data.fields == {"plan": "pro", "seats": "5", "trial": "true"}


def test_an_identify_names_its_form_and_joins_first_and_last_name():
    outcome = mapper().map(identify(form_id="newsletter", firstName="Ana", lastName="López", company="Acme"))
    assert (outcome.input.form_id, outcome.input.name, outcome.input.company) == ("newsletter", "Ana López", "Acme")
    assert outcome.input.fields == {}


def test_an_identify_keeps_at_most_fifty_storable_fields():
    traits = {f"t{i}": str(i) for i in range(60)} | {"": "x", "n" * 101: "x", "nul\x00": "x", "v": "a\x00b"}
    outcome = mapper().map(identify(**traits))
    assert list(outcome.input.fields) == [f"t{i}" for i in range(50)]


def test_an_identify_reads_context_traits_where_rudderstack_puts_them():
    message = {"type": "identify", "userId": "u1", "context": {"traits": {"email": "ana@example.com", "name": "Ana"}}}
    outcome = mapper().map(message)
    assert (outcome.input.email, outcome.input.name) == ("ana@example.com", "Ana")
    both = {**message, "traits": {"name": "Ana López"}}  # the message's own traits win
    assert mapper().map(both).input.name == "Ana López"


def test_an_identify_without_an_email_is_ignored():
    outcome = mapper().map({"type": "identify", "userId": "u1", "traits": {"name": "Ana"}})
    assert (outcome.input, outcome.skipped) == (None, None)


def test_an_identify_with_a_bad_email_is_invalid():
    assert mapper().map(identify(email="not an email")).skipped == "invalid"


# --- track ------------------------------------------------------------------------------


def test_a_form_event_is_a_form_submission_reading_properties_then_context_traits():
    message = {
        "type": "track",
        "event": " form submitted ",  # names compare ignoring case and surrounding spaces
        "anonymousId": "visitor-1",
        "properties": {"form_id": "demo-request", "budget": "10k", "name": "Ana"},
        "context": {"traits": {"email": "ana@example.com", "name": "Old name", "phone": "+34 600"}},
    }
    outcome = mapper().map(message)
    data = to_envelope(outcome.input, NOW)[1].data
    assert (data.form_id, data.email, data.name, data.phone) == ("demo-request", "ana@example.com", "Ana", "+34 600")
    assert data.fields == {"budget": "10k"} and data.anonymous_id == "visitor-1"


def test_a_form_event_without_form_id_is_named_by_the_event():
    message = {"type": "track", "event": "Signed Up", "properties": {"email": "ana@example.com"}}
    assert mapper().map(message).input.form_id == "Signed Up"


def test_a_form_event_without_an_email_is_unmapped_and_other_tracks_are_ignored():
    assert mapper().map({"type": "track", "event": "Signed Up", "properties": {}}).skipped == "unmapped"
    other = mapper().map({"type": "track", "event": "Clicked", "properties": {"email": "ana@example.com"}})
    assert (other.input, other.skipped) == (None, None)


def test_the_form_events_are_configurable():
    custom = mapper(form_events=casefolded(["Demo Requested"]))
    assert custom.map({"type": "track", "event": "demo requested", "properties": {"email": "a@b.co"}}).input
    assert custom.map({"type": "track", "event": "Signed Up", "properties": {"email": "a@b.co"}}).input is None


# --- every type -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["screen", "group", "alias", "SCREEN"])
def test_screen_group_and_alias_are_ignored(kind):
    outcome = mapper().map({"type": kind, "userId": "u1"})
    assert (outcome.type, outcome.input, outcome.skipped) == (kind.lower(), None, None)


@pytest.mark.parametrize("message", [5, "page", None, [], {"type": "purchase"}, {"type": 3}, {}])
def test_what_is_no_message_of_a_known_type_is_malformed(message):
    outcome = mapper().map(message)
    assert (outcome.type, outcome.skipped) == ("unknown", "malformed")


def test_a_single_message_route_implies_the_type():
    outcome = mapper(route_type="page").map({**page(), "type": "track"})
    assert outcome.type == "page" and isinstance(outcome.input, PageViewInput)


def test_a_message_over_the_limit_is_too_large_measured_as_compact_json():
    message = page(properties={"url": "https://www.example.com/", "filler": "é" * 100})
    limit = len(str(message).encode())  # larger than its compact JSON
    assert mapper(max_message_bytes=limit).map(message).input is not None
    assert mapper(max_message_bytes=100).map(message).skipped == "too_large"


def test_the_batchs_context_holds_for_its_messages_and_a_messages_own_wins():
    shared = {"campaign": {"name": "batch-wide"}, "page": {"url": "https://www.example.com/shared"}}
    batch = mapper(shared_context=shared)
    own = batch.map({"type": "page", "anonymousId": "v", "context": {"campaign": {"name": "own"}}})
    assert own.input.utm.campaign == "own" and own.input.url == "https://www.example.com/shared"


# --- ids and time -----------------------------------------------------------------------


def test_a_uuid_message_id_is_the_event_id_and_another_id_a_stable_uuid5_per_write_key():
    mine = uuid.uuid4()
    assert event_id_of(str(mine), KEY) == mine
    assert event_id_of(mine.hex, KEY) == mine
    derived = event_id_of("ajs-next-1700000000000-abc", KEY)
    assert derived is not None and derived.version == 5
    assert derived == event_id_of("ajs-next-1700000000000-abc", KEY)
    assert derived != event_id_of("ajs-next-1700000000000-abc", "another-key")
    assert event_id_of(12, KEY) == event_id_of("12", KEY)
    assert event_id_of(None, KEY) is None and event_id_of("", KEY) is None
    assert mapper().map(page(messageId=str(mine))).input.event_id == mine


def test_timestamps_are_corrected_for_the_clients_clock_by_sent_at():
    # The client's clock runs an hour behind: it stamped the event 10 s before sending it.
    timestamp = NOW - timedelta(hours=1, seconds=10)
    sent = NOW - timedelta(hours=1)
    assert occurred_at(timestamp, sent, NOW, CLOCK_SKEW) == (NOW - timedelta(seconds=10), False)
    assert occurred_at(timestamp, None, NOW, CLOCK_SKEW) == (timestamp, False)
    assert occurred_at(None, sent, NOW, CLOCK_SKEW) == (NOW, False)


def test_a_messages_own_sent_at_wins_over_the_batchs():
    stamp = {"timestamp": "2025-03-01T10:59:50Z"}
    batch = mapper(sent_at=parse_time("2025-03-01T11:00:00Z"))
    assert batch.map(page(**stamp)).input.occurred_at == NOW - timedelta(seconds=10)
    own = batch.map(page(**stamp, sentAt="2025-03-01T10:59:55Z"))
    assert own.input.occurred_at == NOW - timedelta(seconds=5)


@pytest.mark.parametrize(
    ("timestamp", "sent_at", "clamped"),
    [
        (NOW + timedelta(minutes=2), None, False),  # a clock a little ahead: now
        (NOW + timedelta(hours=2), None, True),
        (datetime(1970, 1, 1, tzinfo=UTC), None, True),  # an unset clock
        (datetime(1970, 1, 1, tzinfo=UTC), NOW + timedelta(days=1), True),
        (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC), True),  # beyond datetime's range
    ],
)
def test_an_implausible_moment_becomes_the_time_received(timestamp, sent_at, clamped):
    assert occurred_at(timestamp, sent_at, NOW, CLOCK_SKEW) == (NOW, clamped)


def test_an_old_timestamp_from_an_sdks_queue_is_kept():
    old = NOW - timedelta(days=3)
    outcome = mapper().map(page(timestamp=old.isoformat(), sentAt=NOW.isoformat()))
    assert outcome.input.occurred_at == old and not outcome.clamped


def test_an_unset_clock_is_clamped_and_counted_not_lost():
    outcome = mapper().map(page(timestamp="1970-01-01T00:00:00Z"))
    assert outcome.input.occurred_at == NOW and outcome.clamped


@pytest.mark.parametrize("timestamp", ["yesterday", 1700000000, {"at": 1}])
def test_a_timestamp_that_is_no_date_time_is_invalid(timestamp):
    assert mapper().map(page(timestamp=timestamp)).skipped == "invalid"


def test_a_naive_timestamp_is_utc_and_a_bad_sent_at_is_no_correction():
    outcome = mapper().map(page(timestamp="2025-03-01T11:00:00", sentAt="soon"))
    assert outcome.input.occurred_at == NOW - timedelta(hours=1)
