"""docker-compose.yml as users run it: `docker compose up --build` brings up Kafka, Postgres and
the four services; events posted to ingest on the published ports reach the KPIs; after
`docker compose down` and `up` again nothing is lost (the volumes) and new events still flow.

Where no image registry is reachable, deploy/docker/docker.sh starts the engine, builds the
compose v2 CLI and local stand-ins for the official images, and the compose file's own
variables (EMBUDO_PYTHON_IMAGE, KAFKA_IMAGE, POSTGRES_IMAGE) select them; the published
ports move to free ones (EMBUDO_*_HOST_PORT), since the native broker and database already
use the defaults. The compose file itself is the one users run, unchanged."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import Envelope
from shared.settings import DEV_API_TOKEN, DEV_WRITE_KEY
from shared.topics import FORM_SUBMISSIONS
from tests.support import free_port

# A cold machine builds the compose CLI and the stand-in images here first (docs/operations.md).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
DOCKER_SH = ROOT / "deploy" / "docker" / "docker.sh"
SERVICES = ("ingest", "leads", "sales", "metrics")
PUBLISHED = (*SERVICES, "kafka", "postgres")
# Keeps the services image's layers (its dependencies above all) between runs of this test,
# whose projects, and so image names, are new each time.
BUILD_CACHE_TAG = "embudo-e2e/services:build-cache"


@dataclass
class Compose:
    project: str
    env: dict[str, str]
    ports: dict[str, int]

    def run(self, *args: str, timeout: float = 900) -> str:
        command = [str(DOCKER_SH), "compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args]
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            raise AssertionError(f"docker compose {' '.join(args)} failed:\n{output}")
        return done.stdout

    def logs(self) -> str:
        try:
            return self.run("logs", "--no-color", "--tail", "40", timeout=60)[-6000:]
        except AssertionError as e:
            return str(e)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def up(self, *args: str) -> None:
        self.run("up", "--detach", "--wait", "--wait-timeout", "300", *args)
        deadline = time.monotonic() + 120
        for service in SERVICES:
            while not self.ready(service):
                assert time.monotonic() < deadline, f"{service} not ready:\n{self.logs()}"
                time.sleep(0.5)

    def ready(self, service: str) -> bool:
        try:
            return httpx.get(f"{self.url(service)}/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def compose() -> Iterator[Compose]:
    prepared = subprocess.run([str(DOCKER_SH), "prepare"], capture_output=True, text=True, timeout=2000)
    if prepared.returncode != 0:
        pytest.fail(
            f"Docker is not usable on this machine, so docker-compose.yml cannot be tested "
            f"(deploy/docker/docker.sh prepare exited {prepared.returncode}):\n{prepared.stderr[-4000:]}",
            pytrace=False,
        )
    images = dict(line.split("=", 1) for line in prepared.stdout.split())
    ports = {name: free_port() for name in PUBLISHED}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBUDO_", "COMPOSE_"))}
    env |= images | {f"EMBUDO_{name.upper()}_HOST_PORT": str(port) for name, port in ports.items()}
    running = Compose(f"embudo-e2e-{uuid.uuid4().hex[:10]}", env, ports)
    try:
        yield running
    finally:
        running.run("down", "--volumes", "--remove-orphans", timeout=300)
        keep_build_cache(running.project)
        # Untags only (the cache tag holds the image); compose's classic builds carry no project label for --rmi.
        subprocess.run(["docker", "image", "rm", *(f"{running.project}-{s}" for s in SERVICES)], capture_output=True)


def keep_build_cache(project: str) -> None:
    def image_id(name: str) -> str:
        done = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    new, old = image_id(f"{project}-ingest"), image_id(BUILD_CACHE_TAG)
    if new and new != old:
        subprocess.run(["docker", "tag", new, BUILD_CACHE_TAG], check=True, capture_output=True)
        if old:  # its layers below the code are the new one's too; only the rest goes
            subprocess.run(["docker", "image", "rm", old], capture_output=True)


class Client:
    def __init__(self, compose: Compose) -> None:
        self.compose = compose
        self.now = datetime.now(UTC).replace(microsecond=0)
        start, end = self.now - timedelta(days=1), self.now + timedelta(hours=1)
        self.period = {"from": start.isoformat(), "to": end.isoformat()}
        self.submissions: set[str] = set()  # event ids

    def post(self, path: str, body: dict) -> list[str]:
        response = httpx.post(
            f"{self.compose.url('ingest')}{path}",
            json=body,
            headers={"Authorization": f"Bearer {DEV_WRITE_KEY}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return response.json()["event_ids"]

    def submit(self, email: str, campaign: str) -> None:
        utm = {"campaign": campaign, "medium": "cpc", "source": "compose"}
        body = {"form_id": "contact", "email": email, "occurred_at": self.at(), "utm": utm}
        self.submissions.update(self.post("/v1/form-submissions", body))

    def clicks(self, campaign: str, count: int) -> None:
        body = {"campaign_id": campaign, "channel": "cpc", "event": "click", "count": count, "occurred_at": self.at()}
        self.post("/v1/campaign-events", body)

    def at(self) -> str:
        return (self.now - timedelta(minutes=5)).isoformat()

    def kpis(self) -> dict:
        response = httpx.get(
            f"{self.compose.url('metrics')}/v1/kpis",
            params=self.period,
            headers={"Authorization": f"Bearer {DEV_API_TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return {"leads_generated": body["leads_generated"], "clicks": body["clicks"], "funnel": body["funnel"]}

    def kpis_settle_at(self, expected: dict, timeout: float = 120) -> dict:
        """Events reach metrics asynchronously: poll until the KPIs are the expected ones."""
        deadline = time.monotonic() + timeout
        while (actual := self.kpis()) != expected:
            assert time.monotonic() < deadline, f"KPIs {actual}, expected {expected}:\n{self.compose.logs()}"
            time.sleep(0.5)
        return actual


async def submissions_on_the_broker(bootstrap: str) -> set[str]:
    """The event ids of every form submission on the topic, read from the host's published port."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        assert FORM_SUBMISSIONS.name in await consumer.topics(), f"no topic {FORM_SUBMISSIONS.name} on {bootstrap}"
        tps = [TopicPartition(FORM_SUBMISSIONS.name, p) for p in range(FORM_SUBMISSIONS.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        ids: set[str] = set()
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids.update(str(Envelope.from_bytes(r.value).event_id) for r in records)
        return ids
    finally:
        await consumer.stop()


async def databases_on_the_server(port: int) -> set[str]:
    conn = await asyncpg.connect(f"postgresql://embudo:embudo@127.0.0.1:{port}/postgres")
    try:
        return {row["datname"] for row in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def leads_only(n: int) -> dict[str, int]:
    return {"leads": n, "mql": 0, "sql": 0, "opportunity": 0, "customer": 0}


async def test_compose_up_runs_the_funnel_and_a_down_and_up_loses_nothing(compose: Compose):
    # Async only for the broker and database checks; pytest-asyncio owns the event loop
    # (asyncio.run here would close it under every later test).
    # One real build first; the other three services' builds then hit its layers (in
    # parallel, all four would do the same work at once on a 2-core machine).
    compose.run("build", "ingest")
    compose.up("--build")
    client = Client(compose)
    for email in ("ana@example.com", "bo@example.com", "cy@example.com"):
        client.submit(email, "spring")
    client.clicks("spring", 40)
    before = client.kpis_settle_at({"leads_generated": 3, "clicks": 40, "funnel": leads_only(3)})
    # The broker and the database answer on their published ports too (the advertised
    # listener follows EMBUDO_KAFKA_HOST_PORT), and the init script made the services' databases.
    bootstrap = f"127.0.0.1:{compose.ports['kafka']}"
    submitted = client.submissions.copy()
    assert await submissions_on_the_broker(bootstrap) == submitted
    databases = await databases_on_the_server(compose.ports["postgres"])
    assert {"embudo_leads", "embudo_sales", "embudo_metrics"} <= databases

    compose.run("down")  # containers gone, volumes kept
    assert not compose.run("ps", "--all", "--quiet").strip()
    compose.up()

    # The projections (Postgres volume) and the topics (Kafka volume) are as they were.
    assert client.kpis() == before
    assert await submissions_on_the_broker(bootstrap) == submitted
    client.submit("di@example.com", "spring")
    client.clicks("spring", 5)
    client.kpis_settle_at({"leads_generated": 4, "clicks": 45, "funnel": leads_only(4)})
