"""Handlers are registered by event model and checked against the consumed topics when a
service is built: a forgotten, misplaced or mistyped handler stops start-up."""

from __future__ import annotations

import pytest

from services.leads.handlers import IGNORED as LEADS_IGNORED
from services.leads.handlers import build_handlers as leads_handlers
from services.leads.settings import DEFAULT_SCORING_CONFIG, load_scoring_rules
from services.metrics.handlers import HANDLERS as METRICS_HANDLERS
from services.metrics.handlers import IGNORED as METRICS_IGNORED
from services.sales.handlers import build_handlers as sales_handlers
from shared.consumer import HandlerMismatch, check_handlers, declared_types
from shared.events import DealWon, Envelope, FormSubmission, LeadCreated, LeadStageChanged, LeadTouched
from shared.topics import CAMPAIGN_EVENTS, DEAL_EVENTS, FORM_SUBMISSIONS, LEAD_EVENTS, PAGE_VIEWS
from shared.uow import UnitOfWork


async def on_lead_created(event: Envelope[LeadCreated], uow: UnitOfWork) -> None: ...


async def on_deal_won(event: Envelope[DealWon], uow: UnitOfWork) -> None: ...


async def on_either(event: Envelope[LeadCreated | LeadTouched], uow: UnitOfWork) -> None: ...


def test_a_handler_declares_the_payloads_it_takes():
    assert declared_types(on_lead_created) == {LeadCreated}
    assert declared_types(on_either) == {LeadCreated, LeadTouched}


def test_the_four_services_handlers_fit_their_topics():
    rules = load_scoring_rules(DEFAULT_SCORING_CONFIG)
    check_handlers([FORM_SUBMISSIONS, PAGE_VIEWS, DEAL_EVENTS], leads_handlers(rules, None), LEADS_IGNORED)
    check_handlers([LEAD_EVENTS], sales_handlers("EUR"), ())
    check_handlers([PAGE_VIEWS, CAMPAIGN_EVENTS, LEAD_EVENTS, DEAL_EVENTS], METRICS_HANDLERS, METRICS_IGNORED)


def test_a_handler_for_a_type_no_consumed_topic_carries_is_refused():
    with pytest.raises(HandlerMismatch, match="DealWon is handled but no consumed topic carries it"):
        check_handlers([LEAD_EVENTS], {DealWon: on_deal_won}, ignores=(LeadCreated, LeadTouched, LeadStageChanged))


def test_a_type_on_a_consumed_topic_must_be_handled_or_ignored():
    with pytest.raises(HandlerMismatch, match="LeadStageChanged arrives on a consumed topic"):
        check_handlers([LEAD_EVENTS], {LeadCreated: on_lead_created, LeadTouched: on_either}, ())
    check_handlers([LEAD_EVENTS], {LeadCreated: on_lead_created, LeadTouched: on_either}, ignores=(LeadStageChanged,))


def test_a_handler_registered_under_another_type_than_it_declares_is_refused():
    with pytest.raises(HandlerMismatch, match="on_lead_created is registered for FormSubmission"):
        check_handlers([FORM_SUBMISSIONS], {FormSubmission: on_lead_created}, ())
