"""The leads rules, without I/O."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.leads.domain import (
    MAX_CUSTOM_FIELDS,
    InvalidStageTime,
    LeadSummary,
    MoveRefused,
    ScoringRules,
    Submission,
    Visit,
    check_move,
    check_stage_time,
    newest_visitors,
    promotes_to_mql,
    scored,
    submission_from,
    summarise,
    visit_from,
)
from services.leads.domain import score as score_summary
from services.leads.main import build_app
from services.leads.settings import DEFAULT_SCORING_CONFIG, LeadsSettings, load_scoring_rules
from shared.errors import OutOfOrder
from shared.events import FormSubmission, PageView, Utm
from shared.rules import CLOCK_SKEW, LEAD_STAGES

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def sub(minutes: int = 0, *, form_id: str = "contact", utm: Utm | None = None, **profile) -> Submission:
    form = FormSubmission(form_id=form_id, email="ana@example.com", utm=utm or Utm(), **profile)
    return submission_from(uuid.uuid4(), form, T0 + timedelta(minutes=minutes))


def visit(minutes: int = 0, *, campaign: str = "spring", medium: str | None = "cpc") -> Visit:
    view = PageView(anonymous_id="v-1", url="https://shop.example/", utm=Utm(campaign=campaign, medium=medium))
    made = visit_from(uuid.uuid4(), view, T0 + timedelta(minutes=minutes))
    assert made is not None
    return made


# --- lifecycle -------------------------------------------------------------------------

ALLOWED = {
    ("lead", "mql"),
    ("lead", "sql"),
    ("lead", "disqualified"),
    ("mql", "sql"),
    ("mql", "disqualified"),
    ("disqualified", "lead"),
}


@pytest.mark.parametrize("move", sorted(ALLOWED))
def test_allowed_moves(move):
    check_move(*move)


@pytest.mark.parametrize("move", sorted(set(itertools.product(LEAD_STAGES, LEAD_STAGES)) - ALLOWED))
def test_every_other_move_is_refused(move):
    with pytest.raises(MoveRefused):
        check_move(*move)


def test_the_refusal_says_where_the_lead_may_go():
    with pytest.raises(MoveRefused, match="may go to: lead"):
        check_move("disqualified", "mql")
    with pytest.raises(MoveRefused, match="already in stage 'sql'"):
        check_move("sql", "sql")


NOW = T0 + timedelta(days=10)


def check_time(occurred_at, last_change_at=None):
    check_stage_time(occurred_at, created_at=T0, last_change_at=last_change_at, now=NOW, clock_skew=CLOCK_SKEW)


def test_stage_time_between_creation_and_now_is_accepted():
    check_time(T0)
    check_time(NOW)
    check_time(NOW + timedelta(seconds=30))  # a client clock running a little fast


@pytest.mark.parametrize(
    "occurred_at, last_change_at, refusal, message",
    [
        (NOW + CLOCK_SKEW + timedelta(seconds=1), None, InvalidStageTime, "future"),
        (T0 - timedelta(seconds=1), None, OutOfOrder, "created_at"),
        (T0 + timedelta(days=1), T0 + timedelta(days=2), OutOfOrder, "last stage change"),
    ],
)
def test_stage_time_refused(occurred_at, last_change_at, refusal, message):
    with pytest.raises(refusal, match=message):
        check_time(occurred_at, last_change_at)


def test_promotion_only_with_a_threshold_and_only_from_lead():
    assert promotes_to_mql(50, "lead", 50)
    assert not promotes_to_mql(49, "lead", 50)
    assert not promotes_to_mql(10_000, "lead", None)
    for stage in ("mql", "sql", "disqualified"):
        assert not promotes_to_mql(100, stage, 50)


# --- attribution and profile -------------------------------------------------------------


def test_touch_takes_campaign_from_utm_campaign_and_channel_from_utm_medium():
    touch = sub(utm=Utm(source="google", medium="cpc", campaign="spring", term="crm", content="ad1")).touch
    assert (touch.campaign_id, touch.channel, touch.source, touch.term, touch.content) == (
        "spring",
        "cpc",
        "google",
        "crm",
        "ad1",
    )
    assert touch.form_id == "contact"
    unattributed = sub().touch
    assert unattributed.campaign_id is None and unattributed.channel is None


def test_facts_follow_occurred_at_whatever_the_arrival_order():
    early = sub(0, utm=Utm(campaign="first", medium="email"), name="Ana")
    middle = sub(30, utm=Utm(campaign="middle", medium="cpc"), company="Acme")
    late = sub(60, utm=Utm(campaign="last", medium="social"), name="Ana Pérez")
    rules = ScoringRules()
    results = [scored(summarise(list(order)), rules) for order in itertools.permutations([early, middle, late])]
    facts = results[0]
    assert all(other == facts for other in results)
    assert facts.created_at == T0
    assert facts.attribution.first_touch.campaign_id == "first"
    assert facts.attribution.last_touch.campaign_id == "last"
    assert facts.attribution.last_touch.channel == "social"
    assert facts.touch_count == 3


submissions = st.builds(
    lambda minutes, form_id, name, company, field_values: sub(
        minutes, form_id=form_id, name=name, company=company, fields=field_values
    ),
    st.integers(0, 5),  # few distinct times, so equal timestamps (ties) are common
    st.sampled_from(["contact", "newsletter", "demo-request"]),
    st.sampled_from([None, "", "Ana", "Ana Pérez"]),
    st.sampled_from([None, "Acme", " "]),
    st.dictionaries(st.sampled_from(["size", "job_title"]), st.sampled_from(["", "10", "CTO"]), max_size=2),
)


visits = st.builds(
    lambda minutes, campaign: visit(minutes, campaign=campaign),
    st.integers(0, 5),
    st.sampled_from(["spring", "retargeting"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(submissions, min_size=1, max_size=8), st.lists(visits, max_size=6), st.randoms(use_true_random=False))
def test_summary_equals_a_recount_in_occurred_at_order_whatever_the_arrival_order(subs, views, random):
    # The reference: read every touch oldest first, newer non-blank answers overwrite.
    touches: list[Submission | Visit] = [*subs, *views]
    ordered = sorted(touches, key=lambda s: (s.occurred_at, str(s.event_id)))
    name = company = None
    fields: dict[str, str] = {}
    for s in ordered:
        if isinstance(s, Submission):
            name, company = s.name or name, s.company or company
            fields.update(s.fields)

    shuffled = random.sample(touches, len(touches))
    one_by_one = LeadSummary.of(shuffled[0])
    for s in shuffled[1:]:
        one_by_one = one_by_one.add(s)
    split = random.randint(1, len(touches))
    halves = summarise(shuffled[:split]).merge(summarise(shuffled[split:])) if split < len(touches) else one_by_one

    for summary in (one_by_one, halves):
        assert summary == summarise(touches)
        assert summary.first_touch == ordered[0].touch and summary.last_touch == ordered[-1].touch
        assert summary.first_submitted_at == min(s.occurred_at for s in subs)
        assert (summary.profile.name, summary.profile.company, summary.profile.fields) == (name, company, fields)
        assert summary.forms == {s.touch.form_id for s in subs}
        assert summary.touch_count == len(touches)


many_keys = st.builds(
    lambda minutes, keys: sub(minutes, fields=dict.fromkeys(keys, "x")),
    st.integers(0, 3),
    st.lists(st.sampled_from([f"k{i}" for i in range(MAX_CUSTOM_FIELDS + 30)]), min_size=1, max_size=40),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(many_keys, min_size=1, max_size=10), st.randoms(use_true_random=False))
def test_a_lead_keeps_its_most_recently_answered_custom_fields_whatever_the_arrival_order(subs, random):
    # The reference: each key's newest answer, then the MAX_CUSTOM_FIELDS newest keys.
    newest: dict[str, tuple] = {}
    for s in subs:
        for key in s.fields:
            newest[key] = max(newest.get(key, ()), (s.occurred_at, str(s.event_id)))
    kept = sorted(newest, key=lambda key: (newest[key], key))[-MAX_CUSTOM_FIELDS:]

    shuffled = random.sample(subs, len(subs))
    summary = LeadSummary.of(shuffled[0])
    for s in shuffled[1:]:
        summary = summary.add(s)
    assert set(summary.fields) == set(kept)
    assert summary == summarise(subs)


def test_custom_fields_beyond_the_limit_drop_the_least_recently_answered():
    batches = [sub(minute, fields={f"m{minute}_{i}": "x" for i in range(50)}) for minute in range(3)]
    summary = summarise([batches[2], batches[0], batches[1]])
    assert len(summary.fields) == MAX_CUSTOM_FIELDS == 100
    assert {key.split("_")[0] for key in summary.fields} == {"m1", "m2"}


def test_a_summary_survives_its_json_round_trip():
    summary = summarise([sub(0, name="Ana", fields={"size": "10"}), sub(5, form_id="pricing"), visit(-5)])
    assert LeadSummary.model_validate(json.loads(json.dumps(summary.model_dump(mode="json")))) == summary
    visits_alone = summarise([visit(0), visit(1)])
    assert visits_alone.first_submitted_at is None
    assert LeadSummary.model_validate(json.loads(json.dumps(visits_alone.model_dump(mode="json")))) == visits_alone


def test_a_summary_stored_before_visits_were_touches_takes_its_first_touch_as_the_first_submission():
    summary = summarise([sub(10, name="Ana"), sub(20)])
    stored = summary.model_dump(mode="json")
    del stored["first_submitted_at"]
    for touch in stored["first_touch"], stored["last_touch"]:
        del touch["kind"]
    old = LeadSummary.model_validate(stored)
    assert old == summary
    assert old.first_submitted_at == T0 + timedelta(minutes=10)
    assert old.first_touch.kind == "form_submission"


# --- visits ----------------------------------------------------------------------------------


def test_a_page_view_with_utm_is_a_visit_touch():
    view = PageView(
        anonymous_id="v-9",
        url="https://shop.example/pricing?utm_source=google",
        title="Pricing",
        utm=Utm(source="google", medium="cpc", campaign="spring", term="crm", content="ad1"),
    )
    made = visit_from(uuid.uuid4(), view, T0)
    assert made is not None and made.anonymous_id == "v-9"
    touch = made.touch
    assert touch.kind == "page_view" and touch.form_id is None
    assert touch.page_url == "https://shop.example/pricing?utm_source=google"
    assert (touch.campaign_id, touch.channel, touch.source, touch.term, touch.content) == (
        "spring",
        "cpc",
        "google",
        "crm",
        "ad1",
    )
    assert sub().touch.kind == "form_submission"


@pytest.mark.parametrize(
    "anonymous_id, utm",
    [
        ("v-1", Utm()),
        ("v-1", Utm(campaign=" ", medium="", source="\t")),  # blank values count as absent
        ("  ", Utm(campaign="spring")),  # nobody to link it to
    ],
)
def test_a_page_view_without_utm_is_no_touch(anonymous_id, utm):
    view = PageView(anonymous_id=anonymous_id, url="https://shop.example/", utm=utm)
    assert visit_from(uuid.uuid4(), view, T0) is None


def test_created_at_is_the_earliest_submission_and_the_first_touch_the_earliest_touch():
    early_visit, form, late_visit = visit(-60, campaign="launch"), sub(0, form_id="demo-request"), visit(30)
    for order in itertools.permutations([early_visit, form, late_visit]):
        facts = scored(summarise(list(order)), RULES)
        assert facts.created_at == T0
        assert facts.attribution.first_touch == early_visit.touch
        assert facts.attribution.last_touch == late_visit.touch
        assert facts.touch_count == 3
    with pytest.raises(ValueError, match="at least one submission"):
        _ = scored(summarise([early_visit]), RULES).created_at


def test_profile_newest_non_blank_answer_wins_item_by_item():
    older = sub(0, name="Ana", phone="+34 600", fields={"job_title": "CTO", "size": "10"})
    newer = sub(5, name="Ana Pérez", phone="  ", fields={"size": "50"})
    profile = scored(summarise([newer, older]), ScoringRules()).profile
    assert profile.name == "Ana Pérez"
    assert profile.phone == "+34 600"  # a blank answer does not erase it
    assert profile.fields == {"job_title": "CTO", "size": "50"}
    assert profile.company is None


# --- scoring -------------------------------------------------------------------------------

RULES = ScoringRules.model_validate(
    {
        "forms": {"points": {"demo-request": 30, "newsletter": 5}, "other": 10},
        "profile": {"name": 5, "company": 10, "job_title": 3},
        "repeat_touches": {"each": 4, "max": 10},
    }
)


def score(submissions: list[Submission], rules: ScoringRules) -> int:
    return score_summary(summarise(submissions), rules)


def test_score_adds_form_points_once_per_distinct_form():
    assert score([sub(form_id="demo-request")], RULES) == 30
    assert score([sub(form_id="unlisted")], RULES) == 10
    # the same form again counts as a repeat touch, not as a second form
    assert score([sub(0, form_id="newsletter"), sub(1, form_id="newsletter")], RULES) == 5 + 4


def test_score_adds_points_per_answered_profile_item():
    complete = sub(form_id="newsletter", name="Ana", company="Acme", fields={"job_title": "CTO"})
    assert score([complete], RULES) == 5 + 5 + 10 + 3
    assert score([sub(form_id="newsletter", phone="+34 600", fields={"other": "x"})], RULES) == 5


def test_visits_count_as_repeat_touches_but_bring_no_form_or_profile_points():
    assert score([sub(0, form_id="newsletter"), visit(5)], RULES) == 5 + 4
    assert score([sub(0, form_id="newsletter"), *(visit(m) for m in range(1, 10))], RULES) == 5 + 10


def test_repeat_touch_points_are_capped():
    touches = [sub(i, form_id="newsletter") for i in range(10)]
    assert score(touches[:2], RULES) == 5 + 4
    assert score(touches[:3], RULES) == 5 + 8
    assert score(touches, RULES) == 5 + 10


def test_scoring_rules_refuse_unknown_keys():
    with pytest.raises(ValueError):
        ScoringRules.model_validate({"forms": {"demo": 30}})


def test_the_shipped_scoring_file_loads(tmp_path: Path):
    rules = load_scoring_rules(DEFAULT_SCORING_CONFIG)
    assert rules.forms.points["demo-request"] > 0
    broken = tmp_path / "scoring.yaml"
    broken.write_text("forms: [not, a, mapping]")
    with pytest.raises(SystemExit, match="invalid scoring config"):
        load_scoring_rules(broken)


def test_threshold_setting_unset_or_empty_means_off(monkeypatch):
    monkeypatch.delenv("EMBUDO_MQL_THRESHOLD", raising=False)
    assert LeadsSettings().mql_threshold is None
    monkeypatch.setenv("EMBUDO_MQL_THRESHOLD", "")
    assert LeadsSettings().mql_threshold is None
    monkeypatch.setenv("EMBUDO_MQL_THRESHOLD", "40")
    assert LeadsSettings().mql_threshold == 40
    monkeypatch.setenv("EMBUDO_SCORING_CONFIG", "/etc/embudo/scoring.yaml")
    assert str(LeadsSettings().scoring_config) == "/etc/embudo/scoring.yaml"


def test_leads_refuses_to_start_without_api_tokens_outside_dev():
    # Otherwise it would start and answer every API request with 401.
    settings = LeadsSettings(env="prod", api_tokens="", database_url="postgresql://unused/leads")
    with pytest.raises(SystemExit, match="EMBUDO_API_TOKENS"):
        build_app(settings)
    assert build_app(LeadsSettings(env="dev", database_url="postgresql://unused/leads"))  # dev-api-token


def test_newest_visitors_keeps_the_most_recently_seen_sorted_by_id():
    seen = {"v-c": T0, "v-a": T0 + timedelta(minutes=2), "v-b": T0 + timedelta(minutes=1), "v-d": T0}
    assert newest_visitors(seen, 10) == ["v-a", "v-b", "v-c", "v-d"]
    assert newest_visitors(seen, 2) == ["v-a", "v-b"]
    # equal times: the larger id is kept, by code point ("a" > "B"), as the store orders them
    assert newest_visitors({"B": T0, "a": T0, "C": T0}, 1) == ["a"]
    assert newest_visitors({}, 3) == []
