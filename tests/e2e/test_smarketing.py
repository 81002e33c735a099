"""Smarketing through the public APIs of the four services as real processes: marketing hands
leads over at SQL, sales accepts (in time, late), rejects one back to mql and gets it again,
leaves one waiting past the SLA, values and dates a deal, records objections; marketing
disqualifies a lead with a reason. Both teams set shared goals. The metrics service's KPIs
(first arrivals, the SLA, the pipeline, the forecast, the pipeline created) equal a
computation made here from what the scenario did; goals, the overdue queue and the feedback
are checked against hand-computed values."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.funnel import Scenario, iso

pytestmark = pytest.mark.e2e


async def test_handoffs_sla_pipeline_goals_and_feedback_through_the_public_apis(stack):
    scenario = Scenario(stack)
    d, now = scenario.day, scenario.now
    try:
        for email, campaign, medium, at in [("gil@example.com", "spring", "cpc", 0.1),
                                            ("hal@example.com", "news", "email", 0.2),
                                            ("ivy@example.com", "spring", "cpc", 0.3),
                                            ("jo@example.com", "spring", "cpc", 0.4),
                                            ("kim@example.com", "news", "email", 0.5)]:  # fmt: skip
            await scenario.submit(email, d(at), campaign, medium)
        close = (now + timedelta(days=5)).date()
        # gil: handed off, accepted after 3 h, given an amount and a close date, moved on; an objection.
        await scenario.move("gil@example.com", "mql", d(1))
        await scenario.move("gil@example.com", "sql", d(2))
        await scenario.accept("gil@example.com", d(2) + timedelta(hours=3))
        await scenario.change_details("gil@example.com", "5000.00", close, d(3))
        await scenario.stage_deal("gil@example.com", "proposal", d(4))
        await scenario.record_objections("gil@example.com", ["Too expensive"], d(5))
        # hal: rejected after 10 h (back to mql), handed off again on day 8 and left waiting.
        await scenario.move("hal@example.com", "sql", d(3))
        await scenario.reject("hal@example.com", "not a fit", d(3) + timedelta(hours=10))
        await scenario.move("hal@example.com", "sql", d(8))
        # ivy: disqualified, with a reason.
        await scenario.move("ivy@example.com", "disqualified", d(2), reason="student")
        # jo: handed off two hours ago: waiting, within the SLA.
        await scenario.move("jo@example.com", "sql", now - timedelta(hours=2))
        # kim: accepted after 30 h (late), then lost with objections.
        await scenario.move("kim@example.com", "sql", d(5))
        await scenario.accept("kim@example.com", d(6) + timedelta(hours=6))
        await scenario.lose("kim@example.com", "price", ["no budget", "meh"], d(9))

        period = {"from": iso(d(-1)), "to": iso(now + timedelta(days=10))}
        expected = scenario.expected_for(d(-1), now + timedelta(days=10))
        kpis = await scenario.kpis_settle_at(expected, **period)
        # By hand: mql/sql gil hal jo kim; opportunity gil, hal (its second handoff), jo, kim.
        assert kpis["stage_reached"] == {"mql": 4, "sql": 4, "opportunity": 4, "customer": 0}
        assert kpis["funnel"] == {"leads": 5, "mql": 4, "sql": 4, "opportunity": 4, "customer": 0}
        assert kpis["sla"] == {
            "handoffs": 5, "accepted": 2, "rejected": 1, "responded_within_sla": 2, "breached": 2, "pending": 2,
            "pending_overdue": 1, "within_sla_rate": 0.4, "median_hours_to_response": 10.0,  # 3, 10, 30 h
        }  # fmt: skip
        # Open now: gil's (5000 × proposal 0.5), hal's second, jo's; expected to close in the period.
        assert kpis["pipeline"] == {"open_deals": 3, "open_value": "5000.00", "weighted_value": "2500.00"}
        assert (kpis["forecast"], kpis["pipeline_created"], kpis["deals_lost"]) == ("2500.00", "5000.00", 1)
        for filters in ({"campaign_id": "news"}, {"channel": "cpc", "attribution": "last_touch"}):
            await scenario.kpis_settle_at(
                scenario.expected_for(d(-1), now + timedelta(days=10), **filters), **period, **filters
            )

        # Shared goals, counted as the KPIs count them.
        sql_goal = {"name": "SQLs this month", "team": "marketing", "metric": "sql", "target": 10, **period}
        pipeline_goal = {"name": "Pipeline", "team": "sales", "metric": "pipeline_created", "target": "4000.00",
                         **period}  # fmt: skip
        for goal_id, body in ((uuid.uuid4(), sql_goal), (uuid.uuid4(), pipeline_goal)):
            response = await scenario.metrics.put(f"/v1/goals/{goal_id}", json=body)
            assert response.status_code == 201, response.text
            again = await scenario.metrics.put(f"/v1/goals/{goal_id}", json=body)
            assert again.status_code == 200 and again.json()["updated_at"] == response.json()["updated_at"]
        goals = (await scenario.metrics.get("/v1/goals", params={"active_at": iso(now)})).json()["items"]
        progress = {g["metric"]: g["progress"] for g in goals}
        # 21 of 31 days elapsed: 4 SQLs of 10 is behind (pace ≈ 0.59); 5000 of 4000 achieved.
        assert (progress["sql"]["actual"], progress["sql"]["status"]) == (4, "behind")
        assert (progress["pipeline_created"]["actual"], progress["pipeline_created"]["status"]) == (
            "5000.00", "achieved")  # fmt: skip
        assert [g["team"] for g in (await scenario.metrics.get("/v1/goals", params={"team": "sales"})).json()[
            "items"]] == ["sales"]  # fmt: skip

        # The overdue queue: hal's second handoff alone (jo's is two hours old).
        hal = scenario.facts.leads["hal@example.com"]
        hal_deal_id, _ = await scenario.deal_for("hal@example.com")  # the second handoff's deal
        queue = (await scenario.metrics.get("/v1/sla/overdue")).json()["items"]
        assert [(i["deal_id"], i["lead_id"], i["campaign_id"]) for i in queue] == [(hal_deal_id, hal.lead_id, "news")]
        waited = (datetime.now(UTC) - d(8)).total_seconds() / 3600
        assert abs(queue[0]["hours_waiting"] - waited) < 0.1, (queue[0], waited)

        feedback = (await scenario.metrics.get("/v1/feedback", params=period)).json()
        assert feedback["rejection_reasons"] == [{"reason": "not a fit", "count": 1}]
        assert feedback["disqualification_reasons"] == [{"reason": "student", "count": 1}]
        by_outcome = feedback["objections_by_outcome"]
        # The vocabulary (services/sales/objections.yaml): "no budget" is budget's label, "meh" nothing.
        assert by_outcome["lost"] == [
            {"key": "budget", "count": 1, "texts": [{"text": "no budget", "count": 1}]},
            {"key": "other", "count": 1, "texts": [{"text": "meh", "count": 1}]},
        ]
        assert by_outcome["open"] == [{"key": "price", "count": 1, "texts": [{"text": "Too expensive", "count": 1}]}]
        assert by_outcome["won"] == []
    finally:
        await scenario.close()
