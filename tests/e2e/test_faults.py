"""Faults while events flow: kill -9 of a service mid-stream, of one of two replicas, of the
partition leader's broker in a three-broker cluster; a broker outage under ingest, a
Postgres restart. At the end nothing is lost and nothing is counted twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner

from shared.topics import CAMPAIGN_EVENTS
from tests.e2e.funnel import Scenario
from tests.e2e.stack import Stack, service_of
from tests.support import eventually

pytestmark = pytest.mark.e2e


async def flow(scenario: Scenario, clicks: int, submissions: int, *, resend_every: int = 10) -> dict[str, int]:
    """Post clicks and form submissions from a few concurrent clients. Every `resend_every`-th
    request is sent twice with the same event_id, like a client that never saw the first 202."""
    statuses: dict[str, int] = {}
    start = scenario.day(1)

    async def click(i: int) -> None:
        event_id = str(uuid.uuid4())
        for _ in range(2 if i % resend_every == 0 else 1):
            await scenario.campaign_event("flow", "cpc", "click", start + timedelta(seconds=i), event_id=event_id)
        statuses["click"] = statuses.get("click", 0) + 1

    async def submit(i: int) -> None:
        event_id = str(uuid.uuid4())
        for _ in range(2 if i % resend_every == 0 else 1):
            await scenario.submit(
                f"visitor{i}@example.com", start + timedelta(seconds=i), "flow", "cpc", event_id=event_id
            )
        statuses["submission"] = statuses.get("submission", 0) + 1

    jobs = [click(i) for i in range(clicks)] + [submit(i) for i in range(submissions)]
    limit = asyncio.Semaphore(8)

    async def limited(job) -> None:
        async with limit:
            await job

    await asyncio.gather(*(limited(job) for job in jobs))
    return statuses


def unique_facts(scenario: Scenario) -> None:
    """The scenario recorded resent events twice; the truth has each event once."""
    seen, events = set(), []
    for event in scenario.facts.campaign_events:
        key = (event["at"], event["event"], event["campaign_id"])
        if key not in seen:
            seen.add(key)
            events.append(event)
    scenario.facts.campaign_events = events
    for lead in scenario.facts.leads.values():
        lead.touches = sorted(set(lead.touches))


async def test_kill_9_of_metrics_and_of_leads_mid_stream_loses_and_doubles_nothing(stack: Stack):
    scenario = Scenario(stack)
    try:
        flowing = asyncio.create_task(flow(scenario, clicks=600, submissions=200))
        await asyncio.sleep(1.0)
        stack.kill("metrics")
        await asyncio.sleep(0.5)
        stack.start("metrics")
        await asyncio.sleep(0.5)
        stack.kill("leads")
        await asyncio.sleep(0.5)
        stack.start("leads")
        done = await flowing
        assert done == {"click": 600, "submission": 200}
        # And once more after the flow, with a backlog waiting for the restarted process.
        stack.kill("metrics")
        stack.start("metrics")

        unique_facts(scenario)
        expected = scenario.expected(campaign_id="flow")
        assert expected["clicks"] == 600 and expected["leads_generated"] == 200
        await scenario.kpis_settle_at(expected, **scenario.period(), campaign_id="flow")
        await asyncio.sleep(2)  # a late double count would show up now
        assert await scenario.kpis_settle_at(expected, timeout=1, **scenario.period(), campaign_id="flow")
    finally:
        await scenario.close()


async def test_broker_outage_gives_503s_and_retried_events_are_counted_once(
    private_broker, new_database, topic_prefix, tmp_path
):
    dsns = {service: await new_database() for service in ("leads", "sales", "metrics")}
    stack = Stack(private_broker.bootstrap, dsns, topic_prefix, tmp_path / "logs")
    stack.start_all()
    scenario = Scenario(stack)
    try:
        unavailable = 0
        sent = 0
        start = scenario.day(2)

        async def send_until_accepted(i: int) -> None:
            """A retrying client: same body, same event_id, until 202."""
            nonlocal unavailable
            body = {
                "event_id": str(uuid.uuid4()),
                "campaign_id": "outage",
                "channel": "cpc",
                "event": "click",
                "occurred_at": (start + timedelta(seconds=i)).isoformat(),
            }
            while True:
                response = await scenario.post_ingest("/v1/campaign-events", body, retry_unavailable=False)
                if response.status_code == 202:
                    return
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"]
                assert response.headers["content-type"].startswith("application/problem+json")
                unavailable += 1
                await asyncio.sleep(0.2)

        async def steady_clients() -> None:
            nonlocal sent
            pending = []
            for i in range(300):
                pending.append(asyncio.create_task(send_until_accepted(i)))
                sent += 1
                await asyncio.sleep(0.02)
            await asyncio.gather(*pending)

        clients = asyncio.create_task(steady_clients())
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_broker.stop)
        await asyncio.sleep(3)
        await asyncio.to_thread(private_broker.start)
        await asyncio.wait_for(clients, 180)

        assert unavailable > 0, "the outage was never visible to clients"
        expected = {"clicks": sent}
        await scenario.kpis_settle_at(expected, timeout=120, **scenario.period(), campaign_id="outage")
        await asyncio.sleep(2)
        assert (await scenario.kpis(**scenario.period(), campaign_id="outage"))["clicks"] == sent
    finally:
        await scenario.close()
        stack.stop_all()


def processed(stack: Stack, name: str, group: str) -> float:
    """Events a replica's consumer has applied, from its /metrics."""
    text = httpx.get(f"{stack.url(name)}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("embudo_events_processed_total{") and f'group="{group}"' in line
    )


async def test_two_replicas_of_each_consumer_share_the_work_and_a_killed_one_loses_nothing(stack: Stack):
    consumers = ("leads", "sales", "metrics")
    for service in consumers:
        stack.start(f"{service}#2")
    scenario = Scenario(stack)
    try:
        flowing = asyncio.create_task(flow(scenario, clicks=600, submissions=200))

        async def both_replicas_working() -> bool:
            replicas = ("leads", "leads#2", "metrics", "metrics#2")
            return all(processed(stack, name, service_of(name)) > 0 for name in replicas)

        await eventually(both_replicas_working, timeout=60)
        for service in consumers:  # mid-stream: the group moves its partitions to the survivor
            stack.kill(f"{service}#2")
        await asyncio.sleep(1.0)
        for service in consumers:  # and a new replica joins later
            stack.start(f"{service}#3")
        done = await flowing
        assert done == {"click": 600, "submission": 200}

        unique_facts(scenario)
        expected = scenario.expected(campaign_id="flow")
        await scenario.kpis_settle_at(expected, **scenario.period(), campaign_id="flow")
        await asyncio.sleep(2)  # a late double count would show up now
        assert await scenario.kpis_settle_at(expected, timeout=1, **scenario.period(), campaign_id="flow")
        # Every lead once in leads too, whichever replica created it.
        emails, cursor = [], None
        while True:
            params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = (await scenario.leads.get("/v1/leads", params=params)).json()
            emails += [lead["email"] for lead in page["items"]]
            if not (cursor := page.get("next_cursor")):
                break
        assert len(emails) == len(set(emails)) == 200
    finally:
        await scenario.close()


async def test_a_postgres_restart_mid_stream_is_waited_out_and_loses_nothing(
    topics, private_postgres, topic_prefix, tmp_path
):
    dsns = {service: private_postgres.dsn(f"embudo_{service}") for service in ("leads", "sales", "metrics")}
    stack = Stack(topics, dsns, topic_prefix, tmp_path / "logs")
    stack.start_all()
    scenario = Scenario(stack)
    try:
        flowing = asyncio.create_task(flow(scenario, clicks=400, submissions=150))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_postgres.stop)

        def readiness(service: str) -> int:
            return httpx.get(f"{stack.url(service)}/health/ready", timeout=5).status_code

        for service in ("leads", "sales", "metrics"):  # they say so, and stay up
            assert await asyncio.to_thread(readiness, service) == 503
        down = await scenario.metrics.get("/v1/kpis")
        assert down.status_code == 503 and down.headers["Retry-After"], down.text
        assert down.headers["content-type"].startswith("application/problem+json")
        await asyncio.sleep(3)
        await asyncio.to_thread(private_postgres.start)

        async def all_ready() -> bool:
            return all([await asyncio.to_thread(readiness, s) == 200 for s in ("leads", "sales", "metrics")])

        await eventually(all_ready, timeout=60)  # on their own: nothing was restarted
        done = await flowing
        assert done == {"click": 400, "submission": 150}

        unique_facts(scenario)
        expected = scenario.expected(campaign_id="flow")
        await scenario.kpis_settle_at(expected, timeout=120, **scenario.period(), campaign_id="flow")
        await asyncio.sleep(2)
        assert await scenario.kpis_settle_at(expected, timeout=1, **scenario.period(), campaign_id="flow")
        assert all(process.poll() is None for process in stack.processes.values())
    finally:
        await scenario.close()
        stack.stop_all()


async def partition_leader(bootstrap: str, topic: str, key: bytes) -> tuple[int, int]:
    """(partition of `key` under the producers' default partitioner, id of its leader broker)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        partitions = sorted(client.cluster.partitions_for_topic(topic))
        partition = DefaultPartitioner()(key, partitions, partitions)
        return partition, client.cluster.leader_for_partition(TopicPartition(topic, partition))
    finally:
        await client.close()


async def test_a_three_broker_cluster_loses_nothing_when_the_partition_leaders_broker_dies(
    private_cluster, new_database, topic_prefix, tmp_path
):
    dsns = {service: await new_database() for service in ("leads", "sales", "metrics")}
    stack = Stack(private_cluster.bootstrap, dsns, topic_prefix, tmp_path / "logs",
                  extra_env={"EMBUDO_KAFKA_REPLICATION_FACTOR": "3"})  # fmt: skip
    stack.start_all()
    scenario = Scenario(stack)
    try:
        clicks = topic_prefix + CAMPAIGN_EVENTS.name
        admin = AIOKafkaAdminClient(bootstrap_servers=private_cluster.bootstrap)
        await admin.start()
        try:
            [described] = await admin.describe_topics([clicks])
            [configs] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, clicks)])
        finally:
            await admin.close()
        assert {len(p["replicas"]) for p in described["partitions"]} == {3}
        settings = {name: value for name, value, *_ in configs.resources[0][4]}
        assert settings["min.insync.replicas"] == "2"

        flowing = asyncio.create_task(flow(scenario, clicks=400, submissions=150))
        await asyncio.sleep(1.5)
        partition, leader = await partition_leader(private_cluster.bootstrap, clicks, b"flow")
        private_cluster.kill(leader)  # the broker every click of the flow is written to
        done = await flowing
        assert done == {"click": 400, "submission": 150}
        _, new_leader = await partition_leader(private_cluster.bootstrap, clicks, b"flow")
        assert new_leader != leader

        unique_facts(scenario)
        expected = scenario.expected(campaign_id="flow")
        await scenario.kpis_settle_at(expected, timeout=120, **scenario.period(), campaign_id="flow")
        await asyncio.sleep(2)
        assert await scenario.kpis_settle_at(expected, timeout=1, **scenario.period(), campaign_id="flow")
    finally:
        await scenario.close()
        stack.stop_all()
