"""Objections counted under the keys of a vocabulary, and sales' answer to a handoff: the
rules, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.sales.domain import (
    OTHER_OBJECTION,
    HandoffAnswered,
    NoObjectionsHere,
    NotAHandoff,
    ObjectionVocabulary,
    ensure_takes_objections,
    ensure_unanswered_handoff,
    objection_phrase,
    probability,
)
from services.sales.main import build_app
from services.sales.settings import (
    DEFAULT_OBJECTIONS_CONFIG,
    DEFAULT_STAGE_PROBABILITIES,
    SalesSettings,
    load_objections,
)
from shared.events import Objection
from shared.rules import handoff_due_at, within_handoff_sla

VOCABULARY = ObjectionVocabulary.model_validate(
    {
        "objections": {
            "price": {"label": "Too expensive", "synonyms": ["pricey", "costs too much"]},
            "no_decision_maker": {"label": "Needs the boss", "synonyms": ["not my call"]},
            "timing": {"label": "Not now", "synonyms": ["don't have time"]},
        }
    }
)


@pytest.mark.parametrize(
    "text",
    ["Too expensive", "too expensive!", "  TOO   expensive. ", "too-expensive", "Too expensive?!", "too\texpensive"],
)
def test_spellings_of_the_label_count_under_its_key(text):
    assert VOCABULARY.key_of(text) == "price"


@pytest.mark.parametrize(
    ("text", "key"), [("Pricey!", "price"), ("COSTS TOO MUCH", "price"), ("not my call", "no_decision_maker")]
)
def test_a_synonym_counts_under_its_key(text, key):
    assert VOCABULARY.key_of(text) == key


def test_the_key_itself_is_a_spelling_of_its_objection():
    assert VOCABULARY.key_of("No decision maker") == "no_decision_maker"
    assert VOCABULARY.key_of("price") == "price"


def test_apostrophes_and_accents_do_not_tell_phrases_apart():
    assert VOCABULARY.key_of("dont have time") == "timing"
    assert VOCABULARY.key_of("Don\u2019t have time") == "timing"
    assert objection_phrase("Decisión  Rápida!") == "decision rapida"


@pytest.mark.parametrize("text", ["too expensive for us", "expensive", "we use a competitor", "!!!"])
def test_what_matches_no_spelling_counts_as_other(text):
    assert VOCABULARY.key_of(text) == OTHER_OBJECTION


def test_normalising_keeps_every_text_as_recorded_in_order():
    texts = ["too expensive!", "Something odd", "Too expensive"]
    assert VOCABULARY.normalise(texts) == [
        Objection(key="price", text="too expensive!"),
        Objection(key="other", text="Something odd"),
        Objection(key="price", text="Too expensive"),
    ]


def test_the_vocabulary_lists_its_entries_then_other():
    labels = VOCABULARY.labels()
    assert [key for key, _, _ in labels] == ["price", "no_decision_maker", "timing", "other"]
    assert labels[0] == ("price", "Too expensive", ["pricey", "costs too much"])


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({"objections": {"other": {"label": "Misc"}}}, "reserved"),
        ({"objections": {"price": {"label": "Price"}, "cost": {"label": "Cost", "synonyms": ["PRICE!"]}}}, "both"),
        ({"objections": {"price": {"label": "?!"}}}, "no letters"),
        ({"objections": {"Price": {"label": "Price"}}}, "pattern"),
        ({"objections": {"price": {"label": "Price", "synonym": ["cost"]}}}, "synonym"),
        ({"objections": {"price": {"label": "Price"}}, "extra": 1}, "extra"),
        ({"objections": {"price": {"synonyms": ["cost"]}}}, "label"),
    ],
)
def test_a_vocabulary_that_is_ambiguous_or_misspelt_is_refused(raw, complaint):
    with pytest.raises(ValueError, match=complaint):
        ObjectionVocabulary.model_validate(raw)


def test_the_shipped_vocabulary_loads_and_knows_the_usual_objections():
    vocabulary = load_objections(DEFAULT_OBJECTIONS_CONFIG)
    assert vocabulary.key_of("Too expensive") == "price"
    assert vocabulary.key_of("no budget") == "budget"
    assert vocabulary.key_of("Not now.") == "timing"
    assert vocabulary.key_of("Went with a competitor") == "competitor"
    assert vocabulary.key_of("missing feature") == "missing_feature"
    assert vocabulary.key_of("No integration") == "integration"
    assert vocabulary.key_of("not the decision maker") == "no_decision_maker"


def test_a_broken_or_unknown_keyed_vocabulary_file_stops_start_up_naming_it(tmp_path: Path):
    for name, text in [("broken.yaml", "objections: [not, a, mapping"), ("keys.yaml", "objectoins: {}")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(SystemExit, match=f"invalid objections config {path}"):
            load_objections(path)
        settings = SalesSettings(env="dev", database_url="postgresql://unused/sales", objections_config=path)
        with pytest.raises(SystemExit, match=name):
            build_app(settings)


def test_the_objections_file_is_a_setting(monkeypatch, tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("objections:\n  price:\n    label: Cost\n")
    monkeypatch.setenv("EMBUDO_OBJECTIONS_CONFIG", str(path))
    assert SalesSettings().objections.key_of("cost") == "price"


# --- the handoff --------------------------------------------------------------------------

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_only_an_unanswered_handoff_can_be_answered():
    ensure_unanswered_handoff(handoff=True, accepted_at=None)
    with pytest.raises(NotAHandoff):
        ensure_unanswered_handoff(handoff=False, accepted_at=NOW)
    with pytest.raises(HandoffAnswered, match="accepted at 2025-06-01"):
        ensure_unanswered_handoff(handoff=True, accepted_at=NOW)


@pytest.mark.parametrize("stage", ["qualification", "proposal", "negotiation", "won"])
def test_objections_are_recorded_on_open_and_won_deals(stage):
    ensure_takes_objections(stage)


@pytest.mark.parametrize("stage", ["lost", "rejected"])
def test_a_lost_or_rejected_deal_takes_no_more_objections(stage):
    with pytest.raises(NoObjectionsHere, match=stage):
        ensure_takes_objections(stage)


def test_a_rejected_deal_has_no_chance():
    assert probability("rejected", DEFAULT_STAGE_PROBABILITIES) == 0.0


def test_the_handoff_sla_counts_from_the_deals_creation_and_includes_its_last_moment():
    sla = timedelta(hours=24)
    assert handoff_due_at(NOW, sla) == NOW + sla
    assert within_handoff_sla(NOW, NOW + sla, sla)
    assert not within_handoff_sla(NOW, NOW + sla + timedelta(seconds=1), sla)


def test_the_sla_setting_is_shared_and_defaults_to_a_day(monkeypatch):
    assert SalesSettings().sla_accept == timedelta(hours=24)
    monkeypatch.setenv("EMBUDO_SLA_ACCEPT_HOURS", "4")
    assert SalesSettings().sla_accept == timedelta(hours=4)
