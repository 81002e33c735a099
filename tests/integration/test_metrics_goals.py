"""Shared goals: PUT creates or replaces (idempotently), GET answers with progress computed as
/v1/kpis counts the goal's KPI, over its period and filters, as of a fixed now (April 20,
12:00 UTC: 65% of April elapsed), on the hand-computed April of test_metrics_smarketing.py;
pace mid-period and after it; listing, paging, ETags, deletion, and the bodies PUT refuses."""

from __future__ import annotations

import uuid

import pytest
from test_metrics_smarketing import APRIL, NOW, april_events
from test_metrics_support import AUTH, at, running_metrics

pytestmark = pytest.mark.integration


def goal(metric: str, target, team: str = "marketing", period: dict = APRIL, **extra) -> dict:
    return {"name": f"{metric} goal", "team": team, "metric": metric, "target": target, **period, **extra}


@pytest.fixture
async def april(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        await metrics.send(april_events())
        metrics.clock_at(NOW)
        yield metrics


async def put(metrics, body: dict, goal_id: uuid.UUID | None = None, expect: int = 201) -> dict:
    response = await metrics.client.put(f"/v1/goals/{goal_id or uuid.uuid4()}", json=body, headers=AUTH)
    assert response.status_code == expect, response.text
    return response.json()


async def test_goal_progress_mid_period_after_it_and_before_it(april):
    # April's actuals (test_metrics_smarketing.py): stage_reached.mql 5, revenue 1150.00, deals
    # won 2, opportunities of c1 4 (A B D F), pipeline created 2300.00. 19.5 of 30 days elapsed.
    mql = await put(april, goal("mql", 10))
    assert mql["progress"] == {
        "actual": 5, "target": 10, "attainment": 0.5, "expected_to_date": 6.5, "pace": 0.7692,
        "projected": 7.6923, "status": "behind",
    }  # fmt: skip
    assert (mql["team"], mql["metric"], mql["target"], mql["from"], mql["to"]) == (
        "marketing", "mql", 10, "2025-04-01T00:00:00Z", "2025-05-01T00:00:00Z")  # fmt: skip
    revenue = await put(april, goal("revenue", "1500.00", team="sales"))
    assert revenue["progress"] == {
        "actual": "1150.00", "target": "1500.00", "attainment": 0.7667, "expected_to_date": "975.00",
        "pace": 1.1795, "projected": "1769.23", "status": "on_track",
    }  # fmt: skip
    assert revenue["currency"] == "EUR"
    c1 = await put(april, goal("opportunities", 7, campaign_id="c1"))
    assert c1["progress"] == {
        "actual": 4, "target": 7, "attainment": 0.5714, "expected_to_date": 4.55, "pace": 0.8791,
        "projected": 6.1538, "status": "at_risk",
    }  # fmt: skip
    assert c1["campaign_id"] == "c1"
    won = await put(april, goal("deals_won", 2, team="sales"))
    assert (won["progress"]["actual"], won["progress"]["status"]) == (2, "achieved")
    pipeline = await put(april, goal("pipeline_created", 2000, team="sales"))  # a number is an amount too
    assert (pipeline["target"], pipeline["progress"]["actual"], pipeline["progress"]["status"]) == (
        "2000.00", "2300.00", "achieved")  # fmt: skip
    # March is over: 1 lead of 3, missed; the whole target was expected.
    march = await put(april, goal("leads_generated", 3, period={"from": "2025-03-01", "to": "2025-04-01"}))
    assert march["progress"] == {
        "actual": 1, "target": 3, "attainment": 0.3333, "expected_to_date": 3.0, "pace": 0.3333,
        "projected": 1.0, "status": "missed",
    }  # fmt: skip
    may = await put(april, goal("sql", 5, period={"from": "2025-05-01", "to": "2025-06-01"}))
    assert may["progress"] == {
        "actual": 0, "target": 5, "attainment": 0.0, "expected_to_date": 0.0, "pace": None, "projected": None,
        "status": "not_started",
    }  # fmt: skip

    # The same goal later in the month, nothing else changing: behind becomes worse.
    april.clock_at(at("2025-04-29"))
    later = (await april.client.get(f"/v1/goals/{mql['goal_id']}", headers=AUTH)).json()
    assert (later["progress"]["expected_to_date"], later["progress"]["pace"]) == (9.3333, 0.5357)
    april.clock_at(at("2025-05-02"))
    after = (await april.client.get(f"/v1/goals/{mql['goal_id']}", headers=AUTH)).json()
    assert (after["progress"]["status"], after["progress"]["projected"]) == ("missed", 5.0)


async def test_put_is_idempotent_and_replaces(april):
    goal_id = uuid.uuid4()
    created = await put(april, goal("sql", 8), goal_id)
    again = await put(april, goal("sql", 8), goal_id, expect=200)
    assert again == created  # nothing changed, not even updated_at
    replaced = await put(april, goal("sql", 4, team="sales", name="SQLs"), goal_id, expect=200)
    assert (replaced["name"], replaced["team"], replaced["target"]) == ("SQLs", "sales", 4)
    assert replaced["created_at"] == created["created_at"] and replaced["updated_at"] > created["updated_at"]
    assert replaced["progress"]["actual"] == 5 and replaced["progress"]["status"] == "achieved"
    fetched = await april.client.get(f"/v1/goals/{goal_id}", headers=AUTH)
    assert fetched.json() == replaced


async def test_listing_filters_pages_and_etags(april):
    ids = [uuid.uuid4() for _ in range(4)]
    await put(april, goal("mql", 10), ids[0])
    await put(april, goal("revenue", "1500.00", team="sales"), ids[1])
    await put(april, goal("sql", 5, period={"from": "2025-05-01", "to": "2025-06-01"}), ids[2])
    await put(april, goal("leads_generated", 5), ids[3])

    listed = (await april.client.get("/v1/goals", headers=AUTH)).json()
    assert [g["goal_id"] for g in listed["items"]] == [str(i) for i in ids] and listed["next_cursor"] is None
    marketing = (await april.client.get("/v1/goals", params={"team": "marketing", "active_at": "2025-04-15"},
                                        headers=AUTH)).json()  # fmt: skip
    assert [g["goal_id"] for g in marketing["items"]] == [str(ids[0]), str(ids[3])]
    may = (await april.client.get("/v1/goals", params={"active_at": "2025-05-01T00:00:00Z"}, headers=AUTH)).json()
    assert [g["goal_id"] for g in may["items"]] == [str(ids[2])]  # `to` is exclusive, `from` inclusive

    first = (await april.client.get("/v1/goals", params={"limit": 3}, headers=AUTH)).json()
    rest = (await april.client.get("/v1/goals", params={"limit": 3, "cursor": first["next_cursor"]},
                                   headers=AUTH)).json()  # fmt: skip
    assert [g["goal_id"] for g in first["items"] + rest["items"]] == [str(i) for i in ids]
    assert rest["next_cursor"] is None

    answered = await april.client.get("/v1/goals", headers=AUTH)
    tag = {**AUTH, "If-None-Match": answered.headers["etag"]}
    assert (await april.client.get("/v1/goals", headers=tag)).status_code == 304
    await put(april, goal("leads_generated", 6), ids[3], expect=200)  # a goal changed
    assert (await april.client.get("/v1/goals", headers=tag)).status_code == 200
    answered = await april.client.get("/v1/goals", headers=AUTH)
    tag = {**AUTH, "If-None-Match": answered.headers["etag"]}
    april.clock_at(at("2025-04-20T12:01"))  # a minute later, the pace moved
    assert (await april.client.get("/v1/goals", headers=tag)).status_code == 200


async def test_delete_and_unknown_goals(april):
    goal_id = uuid.uuid4()
    await put(april, goal("mql", 10), goal_id)
    assert (await april.client.delete(f"/v1/goals/{goal_id}", headers=AUTH)).status_code == 204
    for response in (await april.client.get(f"/v1/goals/{goal_id}", headers=AUTH),
                     await april.client.delete(f"/v1/goals/{goal_id}", headers=AUTH)):  # fmt: skip
        assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    assert (await april.client.get("/v1/goals", headers=AUTH)).json()["items"] == []
    assert (await april.client.get("/v1/goals")).status_code == 401


INVALID = [
    (goal("mql", 10, team="finance"), "team"),
    (goal("mqls", 10), "metric"),
    (goal("mql", 10, period={"from": "2025-04-02", "to": "2025-04-01"}), "to"),
    (goal("mql", 10, period={"from": "2025-04-01", "to": "2025-04-01"}), "to"),
    (goal("mql", 10, period={"from": "2025-04-01T00:00:00", "to": "2025-05-01"}), "from"),  # naive
    (goal("mql", "10"), "target"),  # a count is a number
    (goal("mql", 10.5), "target"),
    (goal("mql", 0), "target"),
    (goal("mql", True), "target"),
    (goal("revenue", "12.345"), "target"),
    (goal("revenue", "-5.00"), "target"),
    (goal("revenue", "1e3"), "target"),
    (goal("revenue", "0.00"), "target"),
    (goal("mql", 10, name="   "), "name"),
    (goal("mql", 10, campaign_id=""), "campaign_id"),
    (goal("mql", 10, owner="ana"), "owner"),
    ({k: v for k, v in goal("mql", 10).items() if k != "from"}, "from"),
]


async def test_put_refuses_what_the_document_does_not_allow(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        for body, field in INVALID:
            response = await metrics.client.put(f"/v1/goals/{uuid.uuid4()}", json=body, headers=AUTH)
            assert response.status_code == 422, (body, response.text)
            assert field in [error["field"] for error in response.json()["errors"]], (body, response.text)
        assert (await metrics.client.get("/v1/goals", headers=AUTH)).json()["items"] == []
        not_uuid = await metrics.client.put("/v1/goals/q2-mql", json=goal("mql", 10), headers=AUTH)
        assert not_uuid.status_code == 422
        malformed = await metrics.client.put(f"/v1/goals/{uuid.uuid4()}", content=b"{",
                                             headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
        assert malformed.status_code == 400
