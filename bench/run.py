"""`make bench`: Embudo's throughput and latency on this machine, written to docs/benchmarks.md.

Side by side, in one run, against the local broker and database:
  a) a raw aiokafka producer (idempotent, acks=all): the ceiling for (b) and (c);
  b) ingest single-event POSTs/s, load from wrk in a separate process;
  c) ingest events/s in batches of 100 (acks=all), from wrk;
     both with ingest and the broker alone, then again with all four services running;
  d) ingest -> KPI-visible latency (p50/p95/p99) at a steady 500 events/s;
  e) the metrics projector's events/s on a backlog, next to a raw aiokafka consumer;
  f) the leads consumer's submissions/s on a backlog: many visitors, and one visitor who
     submits thousands of times (the cost of a submission must not grow with its lead's touches);
  g) page views, the highest-volume input: ingest in batches of 100 (native and Segment's
     batch endpoint) next to the raw producer sending the same events, the metrics
     projection and the leads consumer (most page views carry no UTM) on a backlog.
Services run as separate processes, in their own topic namespace and databases.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.consumer import EventConsumer
from shared.db import apply_migrations, create_pool
from shared.events import CampaignEvent, Envelope, FormSubmission, PageView
from shared.kafka import EventProducer
from shared.topics import CAMPAIGN_EVENTS, FORM_SUBMISSIONS, PAGE_VIEWS, Topic, delete_topics, ensure_topics
from tests.e2e.stack import API_TOKEN, SERVICES, WRITE_KEY, Stack

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("DATABASE_URL", "postgresql://embudo:embudo@127.0.0.1:5432/postgres")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TARGETS = {"b": 3_000, "c": 20_000, "d_p99_ms": 1_000, "e": 10_000}
FORMS = ("newsletter", "demo-request", "pricing", "webinar")


def campaign_envelope(campaign_id: str = "bench") -> Envelope:
    return Envelope.wrap(
        CampaignEvent(campaign_id=campaign_id, channel="cpc", event="click", count=1),
        source="bench",
        key=campaign_id,
        occurred_at=datetime.now(UTC),
    )


def submission_envelope(email: str, n: int) -> Envelope:
    # Event times run backwards now and then, so late (older) submissions are part of the load.
    occurred_at = datetime.now(UTC) - timedelta(minutes=(n * 7919) % 10_000)
    form = FormSubmission(
        form_id=FORMS[n % len(FORMS)],
        email=email,
        name=f"Visitor {n % 97}",
        company="Acme" if n % 3 else None,
        utm={"source": "google", "medium": "cpc", "campaign": f"c{n % 20}"},
        fields={"plan": ("basic", "pro")[n % 2]},
    )
    return Envelope.wrap(form, source="bench", key=email, occurred_at=occurred_at)


def page_view_envelope(n: int) -> Envelope:
    """Visitor n // 5's page view; one in ten arrives from a campaign (UTM), the rest browse."""
    visitor = f"visitor-{n // 5}"
    utm = {"source": "google", "medium": "cpc", "campaign": f"c{n % 20}"} if n % 10 == 0 else {}
    view = PageView(anonymous_id=visitor, url=f"https://www.example.com/p/{n % 40}", title="A page", utm=utm)
    occurred_at = datetime.now(UTC) - timedelta(seconds=(n * 7919) % 86_400)
    return Envelope.wrap(view, source="bench", key=visitor, occurred_at=occurred_at)


async def new_database(name_hint: str) -> str:
    name = f"embudo_bench_{name_hint}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


async def drop_databases(dsns: list[str]) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    for dsn in dsns:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


# --- (a) raw producer ------------------------------------------------------------------------


async def raw_producer(prefix: str, count: int, value: bytes | None = None) -> float:
    topic = Topic(f"{prefix}raw-producer", keyed_by="-", partitions=6, event_types=())
    await ensure_topics(BOOTSTRAP, (topic,))
    value = value or campaign_envelope().to_bytes()
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, enable_idempotence=True, acks="all", linger_ms=2, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        started = time.perf_counter()
        pending = [await producer.send(topic.name, value=value, key=str(i % 64).encode()) for i in range(count)]
        await asyncio.gather(*pending)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


# --- (b), (c) ingest under wrk ------------------------------------------------------------------


def ensure_wrk() -> str:
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def wrk(
    url: str, body: dict, seconds: int, connections: int, authorization: str = f"Bearer {WRITE_KEY}"
) -> tuple[float, dict[str, int]]:
    """Successful requests/s: wrk's rate minus what it reports as non-2xx or socket errors."""
    script = f"""
wrk.method = "POST"
wrk.body = [[{json.dumps(body)}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{authorization}"
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    result = subprocess.run(
        [ensure_wrk(), "-t2", f"-c{connections}", f"-d{seconds}s", "-s", f.name, url],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stdout}{result.stderr}")
    total, failed, rate = 0, 0, 0.0
    for line in result.stdout.splitlines():
        words = line.split()
        if "requests in" in line:
            total = int(words[0])
        elif line.startswith("Non-2xx or 3xx responses:"):
            failed += int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            failed += sum(int(w.rstrip(",")) for w in words if w.rstrip(",").isdigit())
        elif line.startswith("Requests/sec:"):
            rate = float(words[1])
    return rate * (total - failed) / max(1, total), {"requests": total, "failed": failed}


# --- (d) ingest -> KPI latency -----------------------------------------------------------------


async def kpi_latency(stack: Stack, rate: int, seconds: int) -> tuple[dict[str, list[float]], int]:
    """Post a steady `rate`/s mix of page views (three in five) and clicks; two in 50 events
    (a page view and a click) are probes with a campaign of its own, polled on the metrics API until it shows (its
    click, or its page view). Latency = visible - sent. Returns (latencies by kind, failed posts)."""
    latencies: dict[str, list[float]] = {"clicks": [], "page_views": []}
    headers = {"Authorization": f"Bearer {WRITE_KEY}"}
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with (
        httpx.AsyncClient(base_url=stack.url("ingest"), headers=headers, timeout=10, limits=limits) as ingest,
        httpx.AsyncClient(base_url=stack.url("metrics"), headers=auth, timeout=10, limits=limits) as metrics,
    ):

        async def post(path: str, body: dict) -> bool:
            try:
                return (await ingest.post(path, json=body)).status_code == 202
            except httpx.HTTPError:
                return False

        async def probe(kind: str, path: str, body: dict, campaign: str, sent_at: float) -> None:
            if not await post(path, body):
                return
            while time.perf_counter() - sent_at < 30:
                try:
                    kpis = (await metrics.get("/v1/kpis", params={"campaign_id": campaign})).json()
                except httpx.HTTPError:  # counted as not (yet) visible
                    kpis = {}
                if kpis.get(kind):
                    latencies[kind].append(time.perf_counter() - sent_at)
                    return
                await asyncio.sleep(0.01)

        def is_probe(i: int) -> bool:
            return i % 50 in (0, 3)  # 0: a page view, 3: a click

        def event(i: int) -> tuple[str, str, dict, str]:
            campaign = f"probe-{i}" if is_probe(i) else "steady"
            if i % 5 < 3:
                url = f"https://www.example.com/?utm_medium=cpc&utm_campaign={campaign}"
                return "page_views", "/v1/page-views", {"anonymous_id": f"v{i}", "url": url}, campaign
            return (
                "clicks",
                "/v1/campaign-events",
                {"campaign_id": campaign, "channel": "cpc", "event": "click"},
                campaign,
            )

        tasks = []
        tick = 1 / rate
        started = time.perf_counter()
        for i in range(rate * seconds):
            kind, path, body, campaign = event(i)
            sent_at = time.perf_counter()
            job = probe(kind, path, body, campaign, sent_at) if is_probe(i) else post(path, body)
            tasks.append(asyncio.create_task(job))
            await asyncio.sleep(max(0.0, started + (i + 1) * tick - time.perf_counter()))
        results = await asyncio.gather(*tasks)
    failed = sum(1 for r in results if r is False)
    return latencies, failed


# --- (e) projector vs raw consumer on a backlog ---------------------------------------------


async def fill_backlog(prefix: str, count: int, topic: Topic = CAMPAIGN_EVENTS) -> None:
    await ensure_topics(BOOTSTRAP, (topic,), prefix=prefix)
    producer = EventProducer(BOOTSTRAP, client_id="bench", send_timeout=60, topic_prefix=prefix)
    await producer.start()
    for start in range(0, count, 5000):
        if topic is PAGE_VIEWS:
            events = [page_view_envelope(i) for i in range(start, min(count, start + 5000))]
        else:
            events = [campaign_envelope(f"c{i % 50}") for i in range(start, min(count, start + 5000))]
        await producer.publish_many(topic, events)
    await producer.stop()


async def raw_consumer(prefix: str, count: int, topic: Topic = CAMPAIGN_EVENTS) -> float:
    consumer = AIOKafkaConsumer(
        prefix + topic.name,
        bootstrap_servers=BOOTSTRAP,
        group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen, started = 0, None
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            if batch and started is None:
                started = time.perf_counter()
            for records in batch.values():
                for record in records:
                    Envelope.from_bytes(record.value)  # a consumer that does nothing is no baseline
                    seen += 1
        return count / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()


async def consume_backlog(prefix: str, topic: Topic, handlers: dict, migrations: Path, count: int, dsn: str) -> float:
    """Events/s of one service's consumer (the shared runtime and its handlers) over a backlog
    already on `topic`, from its first applied event until `count` are processed. Only the
    handlers of the types `topic` carries are registered (the consumer refuses others)."""
    handlers = {event_type: handler for event_type, handler in handlers.items() if event_type in topic.event_types}
    pool = await create_pool(dsn, max_size=4)
    await apply_migrations(pool, migrations)
    producer = EventProducer(BOOTSTRAP, client_id="bench", topic_prefix=prefix)
    consumer = EventConsumer(
        group=f"bench-{topic.name}-{uuid.uuid4().hex[:6]}",
        topics=[topic],
        handlers=handlers,
        pool=pool,
        producer=producer,
        bootstrap_servers=BOOTSTRAP,
        topic_prefix=prefix,
    )
    launched = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    started = None
    try:
        while (done := await pool.fetchval("SELECT count(*) FROM processed_events")) < count:
            if done and started is None:
                started = time.perf_counter()
            await asyncio.sleep(0.05)
        # A backlog worked off before the first poll saw any of it: timed from the launch.
        return count / (time.perf_counter() - (started or launched))
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)
        await producer.stop()
        await pool.close()


async def projector(prefix: str, count: int, dsn: str, topic: Topic = CAMPAIGN_EVENTS) -> float:
    import services.metrics.main
    from services.metrics.handlers import HANDLERS

    migrations = Path(services.metrics.main.__file__).parent / "migrations"
    return await consume_backlog(prefix, topic, HANDLERS, migrations, count, dsn)


async def leads_on_page_views(prefix: str, count: int) -> float:
    """Page views/s of the leads consumer over the page-view backlog (one in ten with UTM)."""
    import services.leads.main
    from services.leads.handlers import build_handlers
    from services.leads.settings import LeadsSettings, load_scoring_rules

    rules = load_scoring_rules(LeadsSettings().scoring_config)
    migrations = Path(services.leads.main.__file__).parent / "migrations"
    dsn = await new_database("leads_page_views")
    try:
        return await consume_backlog(prefix, PAGE_VIEWS, build_handlers(rules, None), migrations, count, dsn)
    finally:
        await drop_databases([dsn])


async def leads_consumer(emails: list[str], per_email: int) -> float:
    """Submissions/s of the leads consumer over a backlog of `per_email` submissions from
    each of `emails`, interleaved, in a topic namespace and database of its own."""
    import services.leads.main
    from services.leads.handlers import build_handlers
    from services.leads.settings import LeadsSettings, load_scoring_rules

    prefix = f"leadsbench{uuid.uuid4().hex[:6]}."
    await ensure_topics(BOOTSTRAP, (FORM_SUBMISSIONS,), prefix=prefix)
    envelopes = [submission_envelope(email, n) for n in range(per_email) for email in emails]
    producer = EventProducer(BOOTSTRAP, client_id="bench", topic_prefix=prefix)
    await producer.start()
    for start in range(0, len(envelopes), 5000):
        await producer.publish_many(FORM_SUBMISSIONS, envelopes[start : start + 5000])
    await producer.stop()
    rules = load_scoring_rules(LeadsSettings().scoring_config)
    migrations = Path(services.leads.main.__file__).parent / "migrations"
    dsn = await new_database("leads_consumer")
    try:
        return await consume_backlog(
            prefix, FORM_SUBMISSIONS, build_handlers(rules, None), migrations, len(envelopes), dsn
        )
    finally:
        await drop_databases([dsn])
        await delete_topics(BOOTSTRAP, prefix)


# --- report -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = (
        int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
        )
        // 1024
        // 1024
    )
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem} GiB RAM, {platform.platform()}, Python {platform.python_version()}, "
        f"{java}; Kafka 4 (one KRaft node) and PostgreSQL on the same machine as the services and the load."
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@contextlib.asynccontextmanager
async def running_stack(*services: str) -> AsyncIterator[Stack]:
    """The services (all four unless named) as separate processes, in a topic namespace and
    databases of their own."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    await ensure_topics(BOOTSTRAP, prefix=prefix)
    dsns = {s: await new_database(s) for s in ("leads", "sales", "metrics")}
    stack = Stack(
        BOOTSTRAP,
        dsns,
        prefix,
        ROOT / ".run" / "bench-logs",
        extra_env={"EMBUDO_RATE_LIMIT_PER_SECOND": "1000000", "EMBUDO_RATE_LIMIT_BURST": "1000000"},
    )
    try:
        for service in services or SERVICES:
            stack.start(service)
        yield stack
    finally:
        stack.stop_all()
        await drop_databases(list(dsns.values()))
        await delete_topics(BOOTSTRAP, prefix)


async def main(args: argparse.Namespace) -> None:
    results: dict[str, object] = {}
    print("(a) raw producer ...", file=sys.stderr)
    raw_prefix = f"bench{uuid.uuid4().hex[:6]}."
    results["a"] = await raw_producer(raw_prefix, args.producer_messages)
    results["g_raw"] = await raw_producer(raw_prefix, args.producer_messages, page_view_envelope(0).to_bytes())
    await delete_topics(BOOTSTRAP, raw_prefix)

    single = {"form_id": "bench", "email": "visitor@example.com", "utm": {"campaign": "bench", "medium": "cpc"}}
    batch = {"batch": [{"type": "form_submission", **single}] * 100}
    url = "https://www.example.com/pricing?utm_source=google&utm_medium=cpc&utm_campaign=bench"
    views = {"batch": [{"type": "page_view", "anonymous_id": f"v{i}", "url": url} for i in range(100)]}
    pages = {
        "batch": [
            {"type": "page", "anonymousId": f"v{i}", "messageId": str(uuid.uuid4()), "properties": {"url": url}}
            for i in range(100)
        ]
    }
    basic = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

    def load_ingest(stack: Stack, singles: str, batches: str) -> None:
        print(f"({singles}) single POSTs ...", file=sys.stderr)
        rate, statuses = wrk(f"{stack.url('ingest')}/v1/form-submissions", single, args.seconds, 64)
        results.update({singles: rate, f"{singles}_status": statuses})
        print(f"({batches}) batches of 100 ...", file=sys.stderr)
        rate, statuses = wrk(f"{stack.url('ingest')}/v1/batch", batch, args.seconds, 16)
        results.update({batches: rate * 100, f"{batches}_status": statuses})

    # (b) and (c) are one ingest process's capacity: ingest and the broker alone, since the
    # consumers working off the load would take the same two cores away from it. Then the
    # same load with the whole stack running, to show what sharing the cores costs here.
    async with running_stack("ingest") as stack:
        load_ingest(stack, "b", "c")
        print("(g) page views in batches of 100 ...", file=sys.stderr)
        rate, results["g_batch_status"] = wrk(f"{stack.url('ingest')}/v1/batch", views, args.seconds, 16)
        results["g_batch"] = rate * 100
        rate, results["g_segment_status"] = wrk(
            f"{stack.url('ingest')}/segment/v1/batch", pages, args.seconds, 16, authorization=basic
        )
        results["g_segment"] = rate * 100
    async with running_stack() as stack:
        load_ingest(stack, "b_shared", "c_shared")

    # A stack of its own: (b) and (c) leave leads a backlog of ~500,000 submissions that
    # would still be eating these two cores, and (d) is the latency of a steady 500/s.
    async with running_stack() as stack:
        print("(d) latency at 500/s ...", file=sys.stderr)
        latencies, failed = await kpi_latency(stack, 500, args.seconds)
        for kind, measured in latencies.items():
            results[f"d_{kind}"] = {p: percentile(measured, p) * 1000 for p in (50, 95, 99)} | {"probes": len(measured)}
        results["d_failed"] = failed

    print("(e) projector vs raw consumer ...", file=sys.stderr)
    for name, topic in (("e", CAMPAIGN_EVENTS), ("g_projector", PAGE_VIEWS)):
        backlog_prefix = f"backlog{uuid.uuid4().hex[:6]}."
        await fill_backlog(backlog_prefix, args.backlog, topic)
        results[f"{name}_raw"] = await raw_consumer(backlog_prefix, args.backlog, topic)
        projector_db = await new_database("projector")
        results[name] = await projector(backlog_prefix, args.backlog, projector_db, topic)
        await drop_databases([projector_db])
        if topic is PAGE_VIEWS:
            print("(g) leads consumer on page views ...", file=sys.stderr)
            results["g_leads"] = await leads_on_page_views(backlog_prefix, args.backlog)
        await delete_topics(BOOTSTRAP, backlog_prefix)

    print("(f) leads consumer ...", file=sys.stderr)
    visitors = [f"visitor{i}@example.com" for i in range(args.leads_backlog // 5)]
    results["f"] = await leads_consumer(visitors, 5)
    results["f_one"] = await leads_consumer(["frequent@example.com"], args.leads_backlog // 4)
    write_report(results, args)


def write_report(r: dict, args: argparse.Namespace) -> None:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    d, dv = r["d_clicks"], r["d_page_views"]
    text = f"""# Benchmarks

Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine()}

| | measure | result | target | |
|---|---|---|---|---|
| a | raw aiokafka producer (idempotent, acks=all), {args.producer_messages:,} messages | {r["a"]:,.0f} msg/s | ceiling | |
| b | ingest single-event POSTs (wrk, 64 connections, {args.seconds}s), ingest and the broker alone | {r["b"]:,.0f} req/s | ≥ 3,000 | {mark(r["b"] >= TARGETS["b"])} |
| c | ingest events in batches of 100, acks=all (wrk, 16 connections), ingest and the broker alone | {r["c"]:,.0f} events/s | ≥ 20,000 | {mark(r["c"] >= TARGETS["c"])} |
| b″ | the same as b, all four services running (consumers share the two cores) | {r["b_shared"]:,.0f} req/s | — | |
| c″ | the same as c, all four services running | {r["c_shared"]:,.0f} events/s | — | |
| d | ingest → KPI visible at 500 events/s, three in five page views ({r["d_failed"]} failed posts): a click ({d["probes"]} probes) | p50 {d[50]:.0f} ms, p95 {d[95]:.0f} ms, p99 {d[99]:.0f} ms | p99 ≤ 1,000 ms | {mark(d[99] <= TARGETS["d_p99_ms"])} |
| d_pv | the same run: a page view ({dv["probes"]} probes) | p50 {dv[50]:.0f} ms, p95 {dv[95]:.0f} ms, p99 {dv[99]:.0f} ms | p99 ≤ 1,000 ms | {mark(dv[99] <= TARGETS["d_p99_ms"])} |
| e | metrics projector on a backlog of {args.backlog:,} events | {r["e"]:,.0f} events/s | ≥ 10,000 | {mark(r["e"] >= TARGETS["e"])} |
| e′ | raw aiokafka consumer (parse only) on the same backlog | {r["e_raw"]:,.0f} events/s | baseline | |
| f | leads consumer on a backlog of {args.leads_backlog:,} form submissions, 5 from each of {args.leads_backlog // 5:,} visitors | {r["f"]:,.0f} submissions/s | — | |
| f′ | leads consumer on {args.leads_backlog // 4:,} submissions from one visitor (cost must not grow with a lead's touches) | {r["f_one"]:,.0f} submissions/s | — | |
| g_a | raw aiokafka producer, the same, sending page-view events | {r["g_raw"]:,.0f} msg/s | ceiling | |
| g_b | ingest page views in batches of 100 (`/v1/batch`, wrk, 16 connections), ingest and the broker alone | {r["g_batch"]:,.0f} events/s | — | |
| g_s | ingest page views through Segment's batch endpoint (`/segment/v1/batch`, 100 `page` messages, HTTP Basic) | {r["g_segment"]:,.0f} events/s | — | |
| g_e | metrics projector on a backlog of {args.backlog:,} page views (visitors of 5 views, one in ten with UTM, times spread over a day) | {r["g_projector"]:,.0f} events/s | — | |
| g_e′ | raw aiokafka consumer (parse only) on the same backlog | {r["g_projector_raw"]:,.0f} events/s | baseline | |
| g_l | leads consumer on the same backlog (nine in ten carry no UTM: not touches) | {r["g_leads"]:,.0f} page views/s | — | |

Ratios: b/a = {r["b"] / r["a"]:.3f}, c/a = {r["c"] / r["a"]:.3f}, e/e′ = {r["e"] / r["e_raw"]:.3f};
page views: g_b/g_a = {r["g_batch"] / r["g_raw"]:.3f}, g_s/g_a = {r["g_segment"] / r["g_raw"]:.3f},
g_e/g_e′ = {r["g_projector"] / r["g_projector_raw"]:.3f}, g_l/g_e′ = {r["g_leads"] / r["g_projector_raw"]:.3f}.

Only successful responses count in b and c (b: {r["b_status"]}, c: {r["c_status"]},
b″: {r["b_shared_status"]}, c″: {r["c_shared_status"]}, g_b: {r["g_batch_status"]}, g_s: {r["g_segment_status"]}).
Everything — broker, database, four services and the load generator — shares this machine's CPUs,
so these are lower bounds for a deployment that gives each its own cores.
"""
    notes = ROOT / "docs" / "benchmarks-notes.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    (ROOT / "docs" / "benchmarks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--producer-messages", type=int, default=200_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--leads-backlog", type=int, default=20_000)
    asyncio.run(main(parser.parse_args()))
