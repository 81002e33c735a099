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
