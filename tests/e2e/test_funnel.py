"""The whole loop through the public APIs of four real service processes: ad platforms and
websites post to ingest, marketing qualifies leads, sales wins and loses deals, and the
metrics service's KPIs equal a computation made here from what the scenario did."""

from __future__ import annotations

import pytest

from tests.e2e.funnel import Scenario

pytestmark = pytest.mark.e2e


async def test_kpis_of_a_funnel_scenario_equal_an_independent_computation(stack):
    scenario = Scenario(stack)
    try:
        await scenario.marketing()
        await scenario.qualification()
        await scenario.selling()

        period = scenario.period()
        overall = await scenario.kpis_settle_at(scenario.expected(), **period)
        # Spot-check the independent computation itself on numbers worked out by hand.
        assert overall["leads_generated"] == 5 and overall["clicks"] == 200 and overall["spend"] == "320.50"
        assert overall["funnel"] == {"leads": 5, "mql": 3, "sql": 2, "opportunity": 2, "customer": 1}
        assert overall["revenue"] == "1750.00" and overall["new_customers"] == 2 and overall["cac"] == "160.25"
        assert (overall["deals_won"], overall["deals_lost"]) == (2, 1)
        # First arrivals: mql ana bo di fi (fi's sql, created before the period, moved in it), sql and
        # opportunity ana bo fi. Handoffs at sql, answered by working them: ana moved after 24 h (in
        # time), bo lost after 5 days, fi won after 6 (late).
        assert overall["stage_reached"] == {"mql": 4, "sql": 3, "opportunity": 3, "customer": 2}
        assert overall["sla"] == {
            "handoffs": 3, "accepted": 3, "rejected": 0, "responded_within_sla": 1, "breached": 2, "pending": 0,
            "pending_overdue": 0, "within_sla_rate": 0.3333, "median_hours_to_response": 120.0,
        }  # fmt: skip
        assert overall["pipeline"]["open_deals"] == 0 and overall["forecast"] == overall["revenue"]

        for attribution in ("first_touch", "last_touch"):
            for campaign_id in ("spring", "news"):
                await scenario.kpis_settle_at(
                    scenario.expected(campaign_id=campaign_id, attribution=attribution),
                    **period,
                    campaign_id=campaign_id,
                    attribution=attribution,
                )
            await scenario.kpis_settle_at(
                scenario.expected(channel="email", attribution=attribution),
                **period,
                channel="email",
                attribution=attribution,
            )
        # The attribution switch matters here: ana's first touch is spring, her last is news.
        assert scenario.expected(campaign_id="news", attribution="last_touch")["funnel"]["customer"] == 1
        assert scenario.expected(campaign_id="news", attribution="first_touch")["funnel"]["customer"] == 0

        feedback = (await scenario.metrics.get("/v1/feedback", params=period)).json()
        assert "too expensive" in str(feedback) and "price" in str(feedback)
    finally:
        await scenario.close()
