"""Builders for the events metrics consumes, and a running metrics service (no tests here).

Events are built the way leads and sales publish them: every lead event carries the lead's
current created_at and attribution, every deal event the lead's id, created_at and attribution.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

import httpx
import uvicorn

from services.metrics.main import build_app
from services.metrics.settings import MetricsSettings
from shared.events import (
    Attribution,
    CampaignEvent,
    CustomerRevenueRecorded,
    DealAccepted,
    DealCreated,
    DealDetailsChanged,
    DealLost,
    DealObjectionsRecorded,
    DealRejected,
    DealStageChanged,
    DealWon,
    Envelope,
    EventData,
    LeadCreated,
    LeadStageChanged,
    LeadTouched,
    Money,
    Objection,
    PageView,
    Touch,
    Utm,
)
from shared.kafka import EventProducer
from shared.topics import ALL_TOPICS, ensure_topics, topic_of
from tests.support import eventually, serve

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def at(text: str) -> datetime:
    """'2025-03-01' or '2025-03-01T12:00' in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def wrap(data: EventData, key: uuid.UUID | str, occurred_at: datetime) -> Envelope:
    return Envelope.wrap(data, source="test", key=str(key), occurred_at=occurred_at)


@dataclass
class Lead:
    """A lead as leads publishes it. `touches` are (campaign_id, channel, occurred_at);
    `anonymous_ids` the visitors known to be this lead when it was created."""

    touches: list[tuple[str | None, str | None, datetime]]
    lead_id: uuid.UUID = field(default_factory=uuid.uuid4)
    anonymous_ids: list[str] = field(default_factory=list)

    @property
    def created_at(self) -> datetime:
        return min(t[2] for t in self.touches)

    def attribution(self, touches: list | None = None) -> Attribution:
        touches = touches or self.touches
        first, last = min(touches, key=lambda t: t[2]), max(touches, key=lambda t: t[2])
        return Attribution(
            first_touch=Touch(campaign_id=first[0], channel=first[1], occurred_at=first[2]),
            last_touch=Touch(campaign_id=last[0], channel=last[1], occurred_at=last[2]),
        )

    def created(self, stage: str = "lead", touches: list | None = None) -> Envelope:
        """lead.created as of the given touches (default: all of them)."""
        touches = touches or self.touches
        created_at = min(t[2] for t in touches)
        data = LeadCreated(lead_id=self.lead_id, email=f"{self.lead_id}@example.com", stage=stage,
                           created_at=created_at, attribution=self.attribution(touches),
                           anonymous_ids=self.anonymous_ids)  # fmt: skip
        return wrap(data, self.lead_id, created_at)

    def touched(self, touch: tuple[str | None, str | None, datetime], touches: list | None = None,
                anonymous_ids: list[str] | None = None) -> Envelope:  # fmt: skip
        """lead.touched for `touch`, carrying the attribution once `touches` are known (and
        the visitors known by then: `anonymous_ids`, default those of its creation)."""
        touches = touches or self.touches
        data = LeadTouched(
            lead_id=self.lead_id, email=f"{self.lead_id}@example.com", score=0,
            touch=Touch(campaign_id=touch[0], channel=touch[1], occurred_at=touch[2]),
            created_at=min(t[2] for t in touches), attribution=self.attribution(touches),
            anonymous_ids=self.anonymous_ids if anonymous_ids is None else anonymous_ids,
        )  # fmt: skip
        return wrap(data, self.lead_id, touch[2])

    def stage(self, to: str, when: datetime, frm: str = "lead", reason: str | None = None) -> Envelope:
        data = LeadStageChanged.model_validate({
            "lead_id": self.lead_id, "from": frm, "to": to, "occurred_at": when, "reason": reason,
            "created_at": self.created_at, "attribution": self.attribution(),
        })  # fmt: skip
        return wrap(data, self.lead_id, when)

    def _deal(self, deal_id: uuid.UUID) -> dict:
        return {"deal_id": deal_id, "lead_id": self.lead_id, "lead_created_at": self.created_at,
                "attribution": self.attribution()}  # fmt: skip

    def deal_created(self, deal_id: uuid.UUID, when: datetime, *, handoff: bool = False, amount: str | None = None,
                     probability: float | None = None, close: date | None = None) -> Envelope:  # fmt: skip
        data = DealCreated(**self._deal(deal_id), stage="qualification", currency="EUR", created_at=when,
                           handoff=handoff, amount=Decimal(amount) if amount else None, probability=probability,
                           expected_close_date=close)  # fmt: skip
        return wrap(data, self.lead_id, when)

    def deal_moved(self, deal_id: uuid.UUID, when: datetime, to: str = "proposal",
                   probability: float | None = None) -> Envelope:  # fmt: skip
        data = DealStageChanged.model_validate(
            {**self._deal(deal_id), "from": "qualification", "to": to, "occurred_at": when, "probability": probability}
        )
        return wrap(data, self.lead_id, when)

    def details_changed(self, deal_id: uuid.UUID, when: datetime, amount: str | None,
                        close: date | None = None) -> Envelope:  # fmt: skip
        data = DealDetailsChanged(**self._deal(deal_id), amount=Decimal(amount) if amount else None, currency="EUR",
                                  expected_close_date=close, occurred_at=when)  # fmt: skip
        return wrap(data, self.lead_id, when)

    def accepted(self, deal_id: uuid.UUID, when: datetime) -> Envelope:
        return wrap(DealAccepted(**self._deal(deal_id), occurred_at=when), self.lead_id, when)

    def rejected(self, deal_id: uuid.UUID, when: datetime, reason: str) -> Envelope:
        return wrap(DealRejected(**self._deal(deal_id), reason=reason, occurred_at=when), self.lead_id, when)

    def objections_recorded(self, deal_id: uuid.UUID, when: datetime, objections: Iterable[tuple[str, str]]
                            ) -> Envelope:  # fmt: skip
        data = DealObjectionsRecorded(**self._deal(deal_id), occurred_at=when,
                                      objections=[Objection(key=k, text=t) for k, t in objections])  # fmt: skip
        return wrap(data, self.lead_id, when)

    def won(self, deal_id: uuid.UUID, when: datetime, amount: str, first_win: bool = True) -> Envelope:
        data = DealWon(**self._deal(deal_id), amount=Decimal(amount), currency="EUR", occurred_at=when,
                       first_win=first_win)  # fmt: skip
        return wrap(data, self.lead_id, when)

    def lost(self, deal_id: uuid.UUID, when: datetime, reason: str, objections: Iterable[str] = (),
             normalised: Iterable[tuple[str, str]] | None = None) -> Envelope:  # fmt: skip
        """deal.lost; `normalised` (key, text) pairs as sales publishes them now, else only
        the texts (as events from before the vocabulary)."""
        keyed = [Objection(key=k, text=t) for k, t in normalised or ()]
        texts = [o.text for o in keyed] if normalised is not None else list(objections)
        data = DealLost(**self._deal(deal_id), reason=reason, objections=texts, normalised_objections=keyed,
                        occurred_at=when)  # fmt: skip
        return wrap(data, self.lead_id, when)

    def revenue(self, when: datetime, amount: str, kind: str = "renewal") -> Envelope:
        data = CustomerRevenueRecorded(revenue_id=uuid.uuid4(), lead_id=self.lead_id, amount=Decimal(amount),
                                       currency="EUR", kind=kind, occurred_at=when,
                                       attribution=self.attribution())  # fmt: skip
        return wrap(data, self.lead_id, when)


def campaign(campaign_id: str, channel: str, event: str, when: datetime, count: int = 1,
             cost: str | None = None) -> Envelope:  # fmt: skip
    data = CampaignEvent(campaign_id=campaign_id, channel=channel, event=event, count=count,
                         cost=Money(amount=Decimal(cost), currency="EUR") if cost else None)  # fmt: skip
    return wrap(data, campaign_id, when)


def page_view(anonymous_id: str, when: datetime, campaign: str | None = None, medium: str | None = None) -> Envelope:
    """A page view as ingest publishes it: its time is the envelope's occurred_at."""
    data = PageView(anonymous_id=anonymous_id, url="https://example.com/pricing", title="Pricing",
                    utm=Utm(campaign=campaign, medium=medium))  # fmt: skip
    return wrap(data, anonymous_id, when)


async def publish(producer: EventProducer, events: Iterable[Envelope]) -> None:
    """Each event to its topic, in the given order within a topic."""
    by_topic: dict = {}
    for event in events:
        by_topic.setdefault(topic_of(type(event.data)), []).append(event)
    for topic, batch in by_topic.items():
        await producer.publish_many(topic, batch)


@dataclass
class RunningMetrics:
    client: httpx.AsyncClient
    app: object
    producer: EventProducer

    async def send(self, events: list[Envelope], timeout: float = 30.0) -> None:
        """Publish and wait until every one of these event_ids has been applied."""
        await publish(self.producer, events)
        ids = list({e.event_id for e in events})

        async def all_applied() -> bool:
            query = "SELECT count(*) FROM processed_events WHERE event_id = ANY($1::uuid[])"
            return await self.app.state.pool.fetchval(query, ids) == len(ids)

        await eventually(all_applied, timeout=timeout)

    def clock_at(self, moment: datetime) -> None:
        """Fix the service's now (what pending, overdue, open and goal progress are computed against)."""
        from services.metrics.api import current_time

        async def fixed() -> datetime:
            return moment

        self.app.dependency_overrides[current_time] = fixed

    async def kpis(self, path: str = "/v1/kpis", **params) -> dict:
        response = await self.client.get(path, params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()


@asynccontextmanager
async def over_http(app) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) with uvicorn on a free local port: a real HTTP server,
    for a real browser. Yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def running_metrics(
    make_settings, topic_prefix: str, *, http: bool = False, **overrides
) -> AsyncIterator[RunningMetrics]:
    """The metrics app with its consumer, in-process (or over real HTTP with `http=True`)."""
    settings = await make_settings(MetricsSettings, **overrides)
    await ensure_topics(settings.kafka_bootstrap_servers, ALL_TOPICS, prefix=topic_prefix)
    app = build_app(settings)
    producer = EventProducer(settings.kafka_bootstrap_servers, client_id="metrics-test", send_timeout=10,
                             topic_prefix=topic_prefix)  # fmt: skip
    await producer.start()
    try:
        if http:
            async with over_http(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
                yield RunningMetrics(client, app, producer)
        else:
            async with serve(app) as client:
                yield RunningMetrics(client, app, producer)
    finally:
        await producer.stop()
