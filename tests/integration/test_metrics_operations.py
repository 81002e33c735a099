"""Operating metrics: its projection's delay on /metrics, and rebuilding the projection from
the topics while the live service runs (the KPIs before and after the switch are identical,
the API answers throughout, events that arrive during and after the rebuild land in the new
projection, and nothing counts twice)."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from test_metrics_support import AUTH, Lead, at, campaign, publish, running_metrics

from services.metrics import handlers
from services.metrics.rebuild import print_outcome, rebuild

pytestmark = pytest.mark.integration

MARCH = {"from": "2025-03-01", "to": "2025-04-01"}


def traffic(n: int, day: str) -> list:
    """n clicks and n // 10 leads with a won deal each, on one March day."""
    events = [campaign("spring", "cpc", "click", at(f"2025-03-{day}T10:00")) for _ in range(n)]
    for _ in range(n // 10):
        lead = Lead([("spring", "cpc", at(f"2025-03-{day}T11:00"))])
        deal = uuid.uuid4()
        events += [lead.created(), lead.deal_created(deal, at(f"2025-03-{day}T12:00")),
                   lead.won(deal, at(f"2025-03-{day}T13:00"), "100.00")]  # fmt: skip
    return events


async def test_metrics_reports_how_far_behind_now_its_projection_is(make_settings, topic_prefix):
    handlers._projected_as_of.clear()  # the gauge is per process, and this process ran other projections
    async with running_metrics(make_settings, topic_prefix) as metrics:
        newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        await metrics.send([campaign("spring", "cpc", "click", newest - timedelta(minutes=m)) for m in range(3)])
        before = time.time()
        text = (await metrics.client.get("/metrics")).text
        after = time.time()
        [line] = [line for line in text.splitlines() if line.startswith("embudo_projection_delay_seconds ")]
        assert before - newest.timestamp() <= float(line.split()[1]) <= after - newest.timestamp()


async def test_a_rebuild_replays_the_topics_and_switches_over_without_losing_or_doubling(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        before = traffic(300, "02")
        await metrics.send(before)
        settings = metrics.app.state.settings

        answered: list[int] = []
        during = traffic(200, "03")

        async def keep_reading() -> None:
            while True:
                response = await metrics.client.get("/v1/kpis", params=MARCH, headers=AUTH)
                answered.append(response.status_code)
                await asyncio.sleep(0.02)

        async def keep_sending() -> None:
            for start in range(0, len(during), 20):
                await publish(metrics.producer, during[start : start + 20])
                await asyncio.sleep(0.05)

        reader = asyncio.create_task(keep_reading())
        sender = asyncio.create_task(keep_sending())
        try:
            outcome = await rebuild(settings)
            await sender
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

        assert outcome.switched, outcome
        assert outcome.before == outcome.after
        assert outcome.events_replayed >= len(before)
        assert answered and set(answered) == {200}
        report = io.StringIO()
        print_outcome(outcome, report)
        assert "DIFFERENT" not in report.getvalue() and report.getvalue().count("identical") == 4

        after = traffic(100, "04")
        await metrics.send(after)  # applied by the live consumer, into the new projection
        expected = {"clicks": 600, "leads_generated": 60, "deals_won": 60, "revenue": "6000.00"}

        async def settled() -> dict:
            for _ in range(300):
                kpis = await metrics.kpis(**MARCH)
                if all(kpis[k] == v for k, v in expected.items()):
                    return kpis
                await asyncio.sleep(0.1)
            return kpis

        kpis = await settled()
        assert {k: kpis[k] for k in expected} == expected

        # The live service reads and writes the new tables: the replaced schema stopped at the switch.
        conn = await asyncpg.connect(settings.database_url)
        try:
            live_clicks = await conn.fetchval("SELECT sum(clicks) FROM public.campaign_facts")
            old_clicks = await conn.fetchval(f"SELECT sum(clicks) FROM {outcome.replaced_schema}.campaign_facts")
            schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        finally:
            await conn.close()
        assert live_clicks == 600
        assert old_clicks < 600
        assert "metrics_rebuild" not in schemas


async def test_goals_come_through_a_rebuild_as_they_are(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        await metrics.send(traffic(50, "02"))
        metrics.clock_at(at("2025-03-20"))
        goal = {"name": "March leads", "team": "marketing", "metric": "leads_generated", "target": 10, **MARCH}
        goal_id = uuid.uuid4()
        created = await metrics.client.put(f"/v1/goals/{goal_id}", json=goal, headers=AUTH)
        assert created.status_code == 201 and created.json()["progress"]["actual"] == 5

        outcome = await rebuild(metrics.app.state.settings)
        assert outcome.switched, outcome

        after = await metrics.client.get(f"/v1/goals/{goal_id}", headers=AUTH)
        assert after.status_code == 200 and after.json() == created.json()
        other = uuid.uuid4()
        written = await metrics.client.put(f"/v1/goals/{other}", json={**goal, "target": 4}, headers=AUTH)
        assert written.status_code == 201 and written.json()["progress"]["status"] == "achieved"
        listed = (await metrics.client.get("/v1/goals", headers=AUTH)).json()["items"]
        assert [g["goal_id"] for g in listed] == [str(goal_id), str(other)]
        # Goals are not part of the projection: neither schema of it holds them.
        conn = await asyncpg.connect(metrics.app.state.settings.database_url)
        try:
            tables = await conn.fetch("SELECT table_schema FROM information_schema.tables WHERE table_name = 'goals'")
        finally:
            await conn.close()
        assert [t["table_schema"] for t in tables] == ["metrics_state"]


async def test_a_rebuild_brings_facts_the_live_projection_never_kept_when_told_to(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        lead = Lead([("spring", "cpc", at("2025-03-02T09:00"))])
        deal = uuid.uuid4()
        await metrics.send([lead.created(), lead.stage("sql", at("2025-03-02T10:00")),
                            lead.deal_created(deal, at("2025-03-02T10:00"), handoff=True, probability=0.2),
                            lead.accepted(deal, at("2025-03-02T12:00"))])  # fmt: skip
        settings = metrics.app.state.settings
        # A projection from before these facts were kept (its release ignored the events).
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("UPDATE leads SET mql_at = NULL, sql_at = NULL; UPDATE deals SET handoff = false")
        finally:
            await conn.close()
        assert (await metrics.kpis(**MARCH))["sla"]["handoffs"] == 0

        refused = await rebuild(settings)
        assert not refused.switched and refused.before != refused.after
        assert (await metrics.kpis(**MARCH))["sla"]["handoffs"] == 0

        accepted = await rebuild(settings, accept_differences=True)
        assert accepted.switched
        report = io.StringIO()
        print_outcome(accepted, report)
        assert "DIFFERENT" in report.getvalue() and "switched: the rebuilt projection is live" in report.getvalue()
        kpis = await metrics.kpis(**MARCH)
        assert kpis["sla"]["handoffs"] == 1 and kpis["sla"]["responded_within_sla"] == 1
        assert kpis["stage_reached"] == {"mql": 1, "sql": 1, "opportunity": 1, "customer": 0}
