"""The sales rules, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.sales.domain import (
    DealClosed,
    InvalidField,
    StageMove,
    effective_time,
    money,
    plan_stage_move,
    probability,
)
from services.sales.main import build_app
from services.sales.settings import DEFAULT_STAGE_PROBABILITIES, SalesSettings
from shared.errors import OutOfOrder
from shared.rules import CLOCK_SKEW, check_currency

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def when(occurred_at, not_before=NOW - timedelta(days=30)):
    return effective_time(
        occurred_at, now=NOW, not_before=not_before, not_before_what="the deal's created_at", clock_skew=CLOCK_SKEW
    )


def test_occurred_at_defaults_to_now():
    assert when(None) == NOW


def test_a_past_occurred_at_is_kept_for_backfills():
    assert when(NOW - timedelta(days=3)) == NOW - timedelta(days=3)


def test_occurred_at_exactly_at_the_lower_bound_is_accepted():
    assert when(NOW - timedelta(days=30)) == NOW - timedelta(days=30)


def test_occurred_at_before_the_lower_bound_is_refused_naming_it():
    with pytest.raises(OutOfOrder) as refused:
        when(NOW - timedelta(days=31))
    assert refused.value.field == "occurred_at"
    assert "before the deal's created_at" in refused.value.message


def test_occurred_at_in_the_future_is_refused():
    with pytest.raises(InvalidField, match="future"):
        when(NOW + CLOCK_SKEW + timedelta(seconds=1))


def test_a_clock_a_little_fast_counts_as_now():
    assert when(NOW + timedelta(seconds=30)) == NOW


def test_without_occurred_at_history_never_goes_back_in_time():
    # The lead service's clock was ahead: the deal was created "after now".
    later = NOW + timedelta(seconds=5)
    assert when(None, not_before=later) == later


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("qualification", "proposal"),
        ("proposal", "negotiation"),
        ("qualification", "negotiation"),
        ("negotiation", "proposal"),  # backwards: a new proposal after a failed negotiation
        ("negotiation", "qualification"),
    ],
)
def test_any_move_between_open_stages_is_allowed(current, target):
    assert plan_stage_move(current, target) == StageMove(current, target)


def test_asking_for_the_current_stage_changes_nothing():
    assert plan_stage_move("proposal", "proposal") is None
    assert plan_stage_move("proposal", None) is None


@pytest.mark.parametrize("closed", ["won", "lost"])
@pytest.mark.parametrize("target", [None, "proposal", "won"])
def test_closed_deals_refuse_every_change(closed, target):
    with pytest.raises(DealClosed):
        plan_stage_move(closed, target)


def test_closing_is_not_a_stage_move():
    with pytest.raises(InvalidField):
        plan_stage_move("proposal", "won")


def test_currency_defaults_to_the_configured_one_and_ignores_case():
    assert check_currency(None, "EUR") == "EUR"
    assert check_currency("eur", "EUR") == "EUR"


def test_another_currency_is_refused_with_the_expected_one_named():
    with pytest.raises(InvalidField) as refused:
        check_currency("USD", "EUR")
    assert refused.value.field == "currency"
    assert "EUR" in refused.value.message and "USD" in refused.value.message


def test_money_is_exact_cents():
    assert money(Decimal("12.5")) == Decimal("12.50")
    assert str(money(Decimal("1E+2"))) == "100.00"
    assert str(money(Decimal("0.1"))) == "0.10"


def test_probabilities_of_open_and_closed_stages():
    assert [probability(s, DEFAULT_STAGE_PROBABILITIES) for s in ("qualification", "proposal", "negotiation")] == [
        0.2,
        0.5,
        0.8,
    ]
    assert probability("won", DEFAULT_STAGE_PROBABILITIES) == 1.0
    assert probability("lost", DEFAULT_STAGE_PROBABILITIES) == 0.0


def test_stage_probabilities_are_configurable_from_json(monkeypatch):
    monkeypatch.setenv("EMBUDO_STAGE_PROBABILITIES", '{"qualification": 0.1, "proposal": 0.4, "negotiation": 0.9}')
    assert SalesSettings().stage_probabilities == {"qualification": 0.1, "proposal": 0.4, "negotiation": 0.9}


@pytest.mark.parametrize(
    "raw",
    [
        '{"qualification": 0.1, "proposal": 0.4}',
        '{"qualification": 0.1, "proposal": 0.4, "negotiation": 1.5}',
    ],
)
def test_incomplete_or_impossible_probabilities_stop_start_up(monkeypatch, raw):
    monkeypatch.setenv("EMBUDO_STAGE_PROBABILITIES", raw)
    with pytest.raises(ValueError):
        SalesSettings()


def test_sales_refuses_to_start_without_api_tokens_outside_dev():
    # Otherwise it would start and answer every API request with 401.
    settings = SalesSettings(env="prod", api_tokens="", database_url="postgresql://unused/sales")
    with pytest.raises(SystemExit, match="EMBUDO_API_TOKENS"):
        build_app(settings)
    assert build_app(SalesSettings(env="dev", database_url="postgresql://unused/sales"))  # dev-api-token
