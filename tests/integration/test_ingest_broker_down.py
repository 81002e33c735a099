"""Ingest while Kafka is away: 503 + Retry-After within the send bound (never a hang, never
a 500), and accepting again once the broker is back. Runs against a PRIVATE broker started
for this test (deploy/local/kafka.sh with its own state dir and ports): stopping the shared
one would break everyone else's tests."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.ingest.main import build_app
from services.ingest.settings import IngestSettings
from shared.events import Envelope
from shared.topics import CAMPAIGN_EVENTS, ensure_topics
from tests.integration.test_ingest import AUTH, KEY, click
from tests.support import TopicReader, eventually, serve

pytestmark = pytest.mark.integration

SEND_BOUND = 2.0  # EMBUDO_KAFKA_SEND_TIMEOUT_SECONDS for this test


async def test_broker_down_is_503_within_the_bound_and_ingest_recovers(make_settings, private_broker):
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await ensure_topics(private_broker.bootstrap, prefix=prefix)
    settings = await make_settings(
        IngestSettings,
        database=False,
        write_keys=KEY,
        topic_prefix=prefix,
        kafka_bootstrap_servers=private_broker.bootstrap,
        kafka_send_timeout_seconds=SEND_BOUND,
    )
    reader = TopicReader(private_broker.bootstrap, prefix + CAMPAIGN_EVENTS.name)
    await reader.open()
    try:
        async with serve(build_app(settings)) as client:
            before = await client.post("/v1/campaign-events", json=click(), headers=AUTH)
            assert before.status_code == 202, before.text

            await asyncio.to_thread(private_broker.stop)
            retried_id = str(uuid.uuid4())
            # A guard against hanging, not a speed assertion: the answer must come from the
            # send bound, long before this cap.
            down = await asyncio.wait_for(
                client.post("/v1/campaign-events", json=click(event_id=retried_id), headers=AUTH),
                timeout=SEND_BOUND * 3 + 10,
            )
            assert down.status_code == 503, down.text
            assert down.headers["content-type"] == "application/problem+json"
            assert int(down.headers["retry-after"]) >= 1
            assert down.json()["event_ids"] == [retried_id]  # what to retry with
            assert (await client.get("/health/ready")).status_code == 503

            await asyncio.to_thread(private_broker.start)

            async def accepted_again() -> bool:
                # The client's retry, with the same event_id as the request that got 503.
                body = click(event_id=retried_id)
                retry = await client.post("/v1/campaign-events", json=body, headers=AUTH)
                assert retry.status_code in (202, 503), retry.text
                return retry.status_code == 202

            await eventually(accepted_again, timeout=120, interval=1)
            assert (await client.get("/health/ready")).status_code == 200

        ids = {before.json()["event_ids"][0], retried_id}
        records = await reader.read_until(
            lambda r: ids <= {str(Envelope.from_bytes(x.value).event_id) for x in r}, timeout=60
        )
        # The 503'd attempt may also have landed after recovery: same event_id, deduped downstream.
        assert {str(Envelope.from_bytes(r.value).event_id) for r in records} == ids
    finally:
        await reader.close()
