"""A funnel scenario driven only through the public HTTP APIs, and the KPIs it must produce,
computed here from the scenario's own facts (independently of the metrics service)."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

import httpx

from tests.e2e.stack import API_TOKEN, WRITE_KEY, Stack


@dataclass
class Lead:
    email: str
    touches: list[tuple[datetime, str | None, str | None]] = field(default_factory=list)  # (at, campaign, channel)
    stages: list[str] = field(default_factory=list)
    moves: list[tuple[datetime, str]] = field(default_factory=list)  # (at, stage)
    lead_id: str | None = None

    @property
    def created_at(self) -> datetime:
        return min(t[0] for t in self.touches)

    def touch(self, attribution: str) -> tuple[str | None, str | None]:
        chosen = min(self.touches) if attribution == "first_touch" else max(self.touches)
        return chosen[1], chosen[2]


# Sales' default stage probabilities (EMBUDO_STAGE_PROBABILITIES); a handoff opens in qualification.
PROBABILITIES = {"qualification": Decimal("0.2"), "proposal": Decimal("0.5"), "negotiation": Decimal("0.8")}
SLA = timedelta(hours=24)  # EMBUDO_SLA_ACCEPT_HOURS


@dataclass
class Deal:
    lead: Lead
    won_at: datetime | None = None
    amount: Decimal | None = None
    lost_at: datetime | None = None
    deal_id: str | None = None
    created_at: datetime | None = None  # a handoff: when its lead reached SQL
    handoff: bool = True
    accepted_at: datetime | None = None
    rejected_at: datetime | None = None
    # (from when, expected amount, expected close date); (from when, probability)
    details: list[tuple[datetime, Decimal | None, date | None]] = field(default_factory=list)
    chances: list[tuple[datetime, Decimal]] = field(default_factory=list)

    @property
    def closed_at(self) -> datetime | None:
        return min((t for t in (self.won_at, self.lost_at, self.rejected_at) if t), default=None)

    def details_as_of(self, moment: datetime) -> tuple[Decimal | None, date | None]:
        before = [d for d in self.details if d[0] < moment]
        return max(before, key=lambda d: d[0])[1:] if before else (None, None)

    def chance_as_of(self, moment: datetime) -> Decimal | None:
        before = [c for c in self.chances if c[0] < moment]
        return max(before, key=lambda c: c[0])[1] if before else None

    def open_at(self, moment: datetime) -> bool:
        return self.created_at is not None and self.created_at < moment and (
            self.closed_at is None or self.closed_at >= moment)  # fmt: skip


@dataclass
class Facts:
    """What the scenario did, in plain terms; the expected KPIs follow from these alone."""

    campaign_events: list[dict] = field(default_factory=list)
    leads: dict[str, Lead] = field(default_factory=dict)
    deals: list[Deal] = field(default_factory=list)
    revenue: list[tuple[Lead, datetime, Decimal]] = field(default_factory=list)


def q4(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.0001"), ROUND_HALF_UP))


def ratio(a, b) -> float | None:
    return None if not b else q4(Decimal(a) / Decimal(b))


def cents(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(Decimal("0.01"), ROUND_HALF_UP))


def expected_kpis(
    facts: Facts,
    start: datetime,
    end: datetime,
    *,
    campaign_id: str | None = None,
    channel: str | None = None,
    attribution: str = "first_touch",
    now: datetime | None = None,
) -> dict:
    def within(at: datetime | None) -> bool:
        return at is not None and start <= at < end

    def matches(lead: Lead) -> bool:
        c, ch = lead.touch(attribution)
        return (campaign_id is None or c == campaign_id) and (channel is None or ch == channel)

    ads = [
        e
        for e in facts.campaign_events
        if within(e["at"])
        and (campaign_id is None or e["campaign_id"] == campaign_id)
        and (channel is None or e["channel"] == channel)
    ]
    impressions = sum(e.get("count", 0) for e in ads if e["event"] == "impression")
    clicks = sum(e.get("count", 0) for e in ads if e["event"] == "click")
    spend = sum((e["amount"] for e in ads if e["event"] == "spend"), Decimal(0))

    cohort = [lead for lead in facts.leads.values() if within(lead.created_at) and matches(lead)]
    deals_of = {id(lead): [d for d in facts.deals if d.lead is lead] for lead in facts.leads.values()}
    reached = {
        "mql": [lead for lead in cohort if {"mql", "sql"} & set(lead.stages)],
        "sql": [lead for lead in cohort if "sql" in lead.stages],
        "opportunity": [lead for lead in cohort if any(not d.rejected_at for d in deals_of[id(lead)])],
        "customer": [lead for lead in cohort if any(d.won_at for d in deals_of[id(lead)])],
    }
    funnel = {"leads": len(cohort)} | {stage: len(leads) for stage, leads in reached.items()}

    attributed_deals = [d for d in facts.deals if matches(d.lead)]
    won = [d for d in attributed_deals if within(d.won_at)]
    lost = [d for d in attributed_deals if within(d.lost_at)]
    first_wins = {}
    for deal in facts.deals:
        if deal.won_at and (id(deal.lead) not in first_wins or deal.won_at < first_wins[id(deal.lead)][1]):
            first_wins[id(deal.lead)] = (deal.lead, deal.won_at)
    new_customers = [lead for lead, at in first_wins.values() if within(at) and matches(lead)]
    recorded = [r for r in facts.revenue if within(r[1]) and matches(r[0])]
    revenue = sum((d.amount for d in won), Decimal(0)) + sum((r[2] for r in recorded), Decimal(0))
    lifetime = sum((d.amount for d in facts.deals if d.won_at and d.lead in new_customers), Decimal(0)) + sum(
        (r[2] for r in facts.revenue if r[0] in new_customers), Decimal(0)
    )
    cycles = [(d.won_at - d.lead.created_at).total_seconds() / 86400 for d in won]
    n = len(new_customers)

    # First arrivals: a move to mql or sql (sql arrives at mql too), a deal's creation.
    now = now or datetime.now(UTC)
    leads = [lead for lead in facts.leads.values() if matches(lead)]
    arrivals = {"mql": [], "sql": [], "opportunity": []}
    for lead in leads:
        opened = [d.created_at for d in deals_of[id(lead)] if d.created_at]
        kept = [d.created_at for d in deals_of[id(lead)] if d.created_at and not d.rejected_at]
        for stage, stages in (("mql", {"mql", "sql"}), ("sql", {"sql"})):
            times = [at for at, to in lead.moves if to in stages] + opened
            arrivals[stage].append(min(times, default=None))
        arrivals["opportunity"].append(min(kept, default=None))
    stage_reached = {stage: sum(within(at) for at in times) for stage, times in arrivals.items()}

    handoffs = [d for d in attributed_deals if d.handoff and within(d.created_at)]
    answers = {id(d): min((t for t in (d.accepted_at, d.rejected_at) if t), default=None) for d in handoffs}
    hours = [(answers[id(d)] - d.created_at) / timedelta(hours=1) for d in handoffs if answers[id(d)]]
    pending = [d for d in handoffs if not answers[id(d)]]
    overdue = [d for d in pending if now - d.created_at > SLA]
    in_time = [d for d in handoffs if answers[id(d)] and answers[id(d)] - d.created_at <= SLA]
    late = [d for d in handoffs if answers[id(d)] and answers[id(d)] - d.created_at > SLA]

    at_end = min(end, now)
    open_deals = [d for d in attributed_deals if d.open_at(at_end)]
    values = [(d.details_as_of(at_end)[0], d.chance_as_of(at_end)) for d in open_deals]
    forecast = revenue
    if end > now:
        today = now.date()
        for d in attributed_deals:
            amount, close = d.details_as_of(now)
            if d.open_at(now) and amount and close and close >= today:
                forecast += amount * d.chance_as_of(now) if within(datetime.combine(close, time(0), UTC)) else 0
    created = [d for d in attributed_deals if within(d.created_at) and not d.rejected_at]
    created_value = sum((d.details_as_of(datetime.max.replace(tzinfo=UTC))[0] or Decimal(0) for d in created),
                        Decimal(0))  # fmt: skip
    return {
        "impressions": impressions,
        "clicks": clicks,
        "spend": cents(spend),
        "leads_generated": len(cohort),
        "funnel": funnel,
        # The scenario posts no page views: no visitors, so no visitor → lead rate (the headline).
        "page_views": 0,
        "sessions": 0,
        "visitors": 0,
        "conversion_rate": None,
        "conversion_rates": {
            "visitor_to_lead": None,
            "click_to_lead": ratio(len(cohort), clicks),
            "lead_to_mql": ratio(funnel["mql"], funnel["leads"]),
            "mql_to_sql": ratio(funnel["sql"], funnel["mql"]),
            "sql_to_opportunity": ratio(funnel["opportunity"], funnel["sql"]),
            "opportunity_to_customer": ratio(funnel["customer"], funnel["opportunity"]),
            "lead_to_customer": ratio(funnel["customer"], funnel["leads"]),
        },
        "close_rate": ratio(funnel["customer"], funnel["leads"]),
        "deals_won": len(won),
        "deals_lost": len(lost),
        "win_rate": ratio(len(won), len(won) + len(lost)),
        "new_customers": n,
        "revenue": cents(revenue),
        "cac": cents(spend / n) if n else None,
        "roi": ratio(revenue - spend, spend),
        "ltv": cents(lifetime / n) if n else None,
        "ltv_to_cac": ratio(lifetime, spend) if n else None,
        "sales_cycle_days": {
            "average": q4(Decimal(str(statistics.mean(cycles)))) if cycles else None,
            "median": q4(Decimal(str(statistics.median(cycles)))) if cycles else None,
        },
        "stage_reached": {**stage_reached, "customer": n},
        "sla": {
            "handoffs": len(handoffs),
            "accepted": sum(bool(answers[id(d)]) and not d.rejected_at for d in handoffs),
            "rejected": sum(bool(d.rejected_at) for d in handoffs),
            "responded_within_sla": len(in_time),
            "breached": len(late) + len(overdue),
            "pending": len(pending),
            "pending_overdue": len(overdue),
            "within_sla_rate": ratio(len(in_time), len(handoffs)),
            "median_hours_to_response": q4(Decimal(str(statistics.median(hours)))) if hours else None,
        },
        "pipeline": {
            "open_deals": len(open_deals),
            "open_value": cents(sum((a or Decimal(0) for a, _ in values), Decimal(0))),
            "weighted_value": cents(sum((a * p for a, p in values if a is not None and p is not None), Decimal(0))),
        },
        "forecast": cents(forecast),
        "pipeline_created": cents(created_value),
    }


def iso(at: datetime) -> str:
    return at.isoformat()


class Scenario:
    """Drives the stack like its users would: websites, ad platforms, marketing, sales."""

    def __init__(self, stack: Stack, now: datetime | None = None) -> None:
        self.stack = stack
        self.now = (now or datetime.now(UTC)).replace(microsecond=0)
        self.t0 = self.now - timedelta(days=20)
        self.facts = Facts()
        self.ingest = httpx.AsyncClient(
            base_url=stack.url("ingest"), timeout=30, headers={"Authorization": f"Bearer {WRITE_KEY}"}
        )
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        self.leads = httpx.AsyncClient(base_url=stack.url("leads"), headers=auth, timeout=30)
        self.sales = httpx.AsyncClient(base_url=stack.url("sales"), headers=auth, timeout=30)
        self.metrics = httpx.AsyncClient(base_url=stack.url("metrics"), headers=auth, timeout=30)

    async def close(self) -> None:
        for client in (self.ingest, self.leads, self.sales, self.metrics):
            await client.aclose()

    def day(self, days: float) -> datetime:
        return self.t0 + timedelta(days=days)

    async def post_ingest(self, path: str, body: dict, retry_unavailable: bool = True) -> httpx.Response:
        """Post like a well-behaved client: on 503, retry the same body (same event_id)."""
        for _ in range(120):
            try:
                response = await self.ingest.post(path, json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.5)
                continue
            if response.status_code != 503 or not retry_unavailable:
                return response
            await asyncio.sleep(0.5)
        raise AssertionError(f"{path} kept answering 503")

    async def campaign_event(
        self,
        campaign_id: str,
        channel: str,
        event: str,
        at: datetime,
        *,
        count: int | None = None,
        amount: str | None = None,
        event_id: str | None = None,
    ):
        body: dict = {"campaign_id": campaign_id, "channel": channel, "event": event, "occurred_at": iso(at)}
        if count is not None:
            body["count"] = count
        if amount is not None:
            body["cost"] = {"amount": amount, "currency": "EUR"}
        if event_id:
            body["event_id"] = event_id
        response = await self.post_ingest("/v1/campaign-events", body)
        assert response.status_code == 202, response.text
        fact = {"campaign_id": campaign_id, "channel": channel, "event": event, "at": at}
        if event == "spend":
            fact["amount"] = Decimal(amount)
        else:
            fact["count"] = count or 1
        self.facts.campaign_events.append(fact)

    async def submit(
        self,
        email: str,
        at: datetime,
        campaign: str | None = None,
        medium: str | None = None,
        event_id: str | None = None,
    ) -> None:
        body: dict = {"form_id": "contact", "email": email, "occurred_at": iso(at), "name": "Visitor"}
        if campaign or medium:
            body["utm"] = {"campaign": campaign, "medium": medium, "source": "e2e"}
        if event_id:
            body["event_id"] = event_id
        response = await self.post_ingest("/v1/form-submissions", body)
        assert response.status_code == 202, response.text
        key = email.strip().lower()
        self.facts.leads.setdefault(key, Lead(key)).touches.append((at, campaign, medium))

    async def lead(self, email: str, timeout: float = 60) -> Lead:
        """Wait until leads has applied every submission of this email, then note its id."""
        lead = self.facts.leads[email]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            items = (await self.leads.get("/v1/leads", params={"email": email})).json()["items"]
            if items:
                detail = (await self.leads.get(f"/v1/leads/{items[0]['lead_id']}")).json()
                if len(detail["touches"]) == len(lead.touches):
                    lead.lead_id = items[0]["lead_id"]
                    return lead
            assert asyncio.get_running_loop().time() < deadline, f"lead {email} incomplete"
            await asyncio.sleep(0.2)

    async def move(self, email: str, stage: str, at: datetime, reason: str = "e2e") -> None:
        lead = await self.lead(email)
        response = await self.leads.post(
            f"/v1/leads/{lead.lead_id}/stage", json={"stage": stage, "occurred_at": iso(at), "reason": reason}
        )
        assert response.status_code == 200, response.text
        lead.stages.append(stage)
        lead.moves.append((at, stage))
        if stage == "sql":  # the handoff: sales opens a deal in qualification
            deal = Deal(lead, created_at=at, chances=[(at, PROBABILITIES["qualification"])], details=[(at, None, None)])
            self.facts.deals.append(deal)

    async def deal_for(self, email: str, timeout: float = 60) -> tuple[str, Deal]:
        """The lead's latest handoff, once sales has opened it."""
        lead = self.facts.leads[email]
        deal = [d for d in self.facts.deals if d.lead is lead][-1]
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            items = (await self.sales.get("/v1/deals", params={"lead_id": lead.lead_id})).json()["items"]
            known = {d.deal_id for d in self.facts.deals if d.lead is lead and d is not deal}
            fresh = [item for item in items if item["deal_id"] not in known]
            if fresh:
                deal.deal_id = fresh[-1]["deal_id"]
                return deal.deal_id, deal
            assert asyncio.get_running_loop().time() < deadline, f"no deal for {email}"
            await asyncio.sleep(0.2)

    def _works(self, deal: Deal, at: datetime) -> None:
        # Working a handoff nobody has answered accepts it.
        if deal.handoff and deal.accepted_at is None and deal.rejected_at is None:
            deal.accepted_at = at

    async def win(self, email: str, amount: str, at: datetime) -> None:
        deal_id, deal = await self.deal_for(email)
        response = await self.sales.post(
            f"/v1/deals/{deal_id}/won", json={"amount": amount, "currency": "EUR", "occurred_at": iso(at)}
        )
        assert response.status_code == 200, response.text
        deal.won_at, deal.amount = at, Decimal(amount)
        self._works(deal, at)

    async def lose(self, email: str, reason: str, objections: list[str], at: datetime) -> None:
        deal_id, deal = await self.deal_for(email)
        response = await self.sales.post(
            f"/v1/deals/{deal_id}/lost", json={"reason": reason, "objections": objections, "occurred_at": iso(at)}
        )
        assert response.status_code == 200, response.text
        deal.lost_at = at
        self._works(deal, at)

    async def stage_deal(self, email: str, stage: str, at: datetime) -> None:
        deal_id, deal = await self.deal_for(email)
        response = await self.sales.patch(f"/v1/deals/{deal_id}", json={"stage": stage, "occurred_at": iso(at)})
        assert response.status_code == 200, response.text
        self._works(deal, at)
        deal.chances.append((at, PROBABILITIES[stage]))

    async def accept(self, email: str, at: datetime) -> None:
        deal_id, deal = await self.deal_for(email)
        response = await self.sales.post(f"/v1/deals/{deal_id}/accept", json={"occurred_at": iso(at)})
        assert response.status_code == 200, response.text
        deal.accepted_at = at

    async def reject(self, email: str, reason: str, at: datetime) -> None:
        """Sales returns the handoff; leads sends the lead back to mql."""
        deal_id, deal = await self.deal_for(email)
        response = await self.sales.post(f"/v1/deals/{deal_id}/reject", json={"reason": reason, "occurred_at": iso(at)})
        assert response.status_code == 200, response.text
        deal.rejected_at = at
        lead = self.facts.leads[email]
        deadline = asyncio.get_running_loop().time() + 60
        while (await self.leads.get(f"/v1/leads/{lead.lead_id}")).json()["stage"] != "mql":
            assert asyncio.get_running_loop().time() < deadline, f"{email} did not go back to mql"
            await asyncio.sleep(0.2)
        lead.moves.append((at, "mql"))

    async def change_details(self, email: str, amount: str, close: date, at: datetime) -> None:
        deal_id, deal = await self.deal_for(email)
        body = {"amount": amount, "expected_close_date": close.isoformat(), "occurred_at": iso(at)}
        response = await self.sales.patch(f"/v1/deals/{deal_id}", json=body)
        assert response.status_code == 200, response.text
        deal.details.append((at, Decimal(amount), close))

    async def record_objections(self, email: str, objections: list[str], at: datetime) -> None:
        deal_id, _ = await self.deal_for(email)
        response = await self.sales.post(
            f"/v1/deals/{deal_id}/objections", json={"objections": objections, "occurred_at": iso(at)}
        )
        assert response.status_code == 200, response.text

    async def renewal(self, email: str, amount: str, at: datetime) -> None:
        lead = self.facts.leads[email]
        response = await self.sales.post(
            f"/v1/customers/{lead.lead_id}/revenue",
            json={"amount": amount, "currency": "EUR", "kind": "renewal", "occurred_at": iso(at)},
        )
        assert response.status_code == 201, response.text
        self.facts.revenue.append((lead, at, Decimal(amount)))

    async def kpis(self, **params) -> dict:
        response = await self.metrics.get("/v1/kpis", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def kpis_settle_at(self, expected: dict, timeout: float = 90, **params) -> dict:
        """Poll until the KPIs equal the expectation (events flow asynchronously), then return them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            actual = await self.kpis(**params)
            subset = {k: actual.get(k) for k in expected}
            if subset == expected:
                return actual
            if asyncio.get_running_loop().time() > deadline:
                differences = {k: (subset[k], v) for k, v in expected.items() if subset[k] != v}
                raise AssertionError(f"KPIs (actual, expected) that differ: {differences}")
            await asyncio.sleep(0.3)

    # --- the story --------------------------------------------------------------------------

    async def marketing(self) -> None:
        d = self.day
        await self.campaign_event("spring", "cpc", "impression", d(0), count=5000)
        await self.campaign_event("spring", "cpc", "click", d(0), count=120)
        await self.campaign_event("spring", "cpc", "spend", d(0), amount="300.00")
        await self.campaign_event("spring", "cpc", "click", d(1), count=30)
        await self.campaign_event("news", "email", "click", d(2), count=50)
        await self.campaign_event("news", "email", "spend", d(2), amount="20.50")
        await self.campaign_event("spring", "cpc", "click", d(-5), count=999)  # before the period
        await self.submit("ana@example.com", d(0.05), "spring", "cpc")
        await self.submit("  ANA@Example.com ", d(3), "news", "email")  # same person, new last touch
        await self.submit("bo@example.com", d(2.05), "news", "email")
        await self.submit("cy@example.com", d(4))  # no UTM: unattributed
        await self.submit("di@example.com", d(5), "spring", "cpc")
        await self.submit("ed@example.com", d(6), "spring", "cpc")
        await self.submit("ed@example.com", d(5.5), "news", "email")  # older, arrives later
        await self.submit("fi@example.com", d(-3), "spring", "cpc")  # created before the period

    async def qualification(self) -> None:
        d = self.day
        await self.move("ana@example.com", "sql", d(4))
        await self.move("bo@example.com", "mql", d(3))
        await self.move("bo@example.com", "sql", d(4))
        await self.move("cy@example.com", "disqualified", d(5))
        await self.move("di@example.com", "mql", d(6))
        await self.lead("ed@example.com")
        await self.move("fi@example.com", "sql", d(1))

    async def selling(self) -> None:
        d = self.day
        await self.stage_deal("ana@example.com", "proposal", d(5))
        await self.win("ana@example.com", "1000.00", d(8))
        await self.renewal("ana@example.com", "250.00", d(10))
        await self.lose("bo@example.com", "price", ["too expensive"], d(9))
        await self.win("fi@example.com", "500.00", d(7))

    def period(self) -> dict:
        return {"from": iso(self.day(-1)), "to": iso(self.now + timedelta(hours=1))}

    def expected(self, **filters) -> dict:
        return expected_kpis(self.facts, self.day(-1), self.now + timedelta(hours=1), **filters)

    def expected_for(self, start: datetime, end: datetime, **filters) -> dict:
        return expected_kpis(self.facts, start, end, **filters)
