"""Property: whatever the world and however its events arrive (shuffled across and within
topics, some twice, deal events carrying an attribution from before a late touch), the KPIs
metrics serves equal a recount done here, independently, from the world itself.

One metrics service runs for the whole test; each generated world lives in its own
400-day window far in the future, so worlds never see each other's facts.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metrics_support import AUTH, Lead, campaign, running_metrics

pytestmark = pytest.mark.integration

CAMPAIGNS = {"a": "cpc", "b": "email", None: None}  # campaign -> its channel (None: unattributed)
STAGE_PATHS = [[], ["mql"], ["sql"], ["mql", "sql"], ["disqualified"], ["mql", "disqualified"],
               ["disqualified", "lead", "mql"]]  # fmt: skip
WINDOW = timedelta(days=400)


@dataclass
class Deal:
    created_day: int
    outcome: str  # open | won | lost
    closed_after_days: float
    amount: Decimal
    reason: str
    objections: list[str]
    deal_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class WorldLead:
    touches: list[tuple[str | None, float]]  # (campaign, day offset)
    stages: list[str]
    deals: list[Deal]
    revenue: list[tuple[float, Decimal]]  # (day offset, amount)


@dataclass
class World:
    leads: list[WorldLead]
    campaign_events: list[tuple[str, str, int, Decimal, float]]  # campaign, kind, count, cost, day


amounts = st.integers(1, 500_000).map(lambda cents: Decimal(cents) / 100)
days = st.floats(0, 60, allow_nan=False).map(lambda d: round(d, 3))
deals = st.builds(
    Deal,
    created_day=st.integers(0, 60),
    outcome=st.sampled_from(["open", "won", "lost"]),
    closed_after_days=st.floats(0.1, 90, allow_nan=False).map(lambda d: round(d, 3)),
    amount=amounts,
    reason=st.sampled_from(["price", "timing", "competitor"]),
    objections=st.lists(st.sampled_from(["too expensive", "no budget", "missing feature"]), max_size=2, unique=True),
)
world_leads = st.builds(
    WorldLead,
    touches=st.lists(
        st.tuples(st.sampled_from(list(CAMPAIGNS)), days), min_size=1, max_size=3, unique_by=lambda t: t[1]
    ),  # fmt: skip
    stages=st.sampled_from(STAGE_PATHS),
    deals=st.lists(deals, max_size=2),
    revenue=st.lists(st.tuples(st.floats(0, 300, allow_nan=False).map(lambda d: round(d, 3)), amounts), max_size=2),
)
campaign_events = st.tuples(
    st.sampled_from(["a", "b"]),
    st.sampled_from(["impression", "click", "spend"]),
    st.integers(1, 500),
    amounts,
    st.floats(0, 100, allow_nan=False).map(lambda d: round(d, 3)),
)
worlds = st.builds(
    World, leads=st.lists(world_leads, max_size=6), campaign_events=st.lists(campaign_events, max_size=8)
)


# --- the events leads, sales and ingest would publish for a world ----------------------


def publishable(world: World, base: datetime, rng: random.Random) -> list:
    def when(day: float) -> datetime:
        return base + timedelta(days=day)

    events = []
    for wl in world.leads:
        touches = [(c, CAMPAIGNS[c], when(d)) for c, d in wl.touches]
        lead = Lead(touches)
        arrival = rng.sample(touches, len(touches))  # submissions may reach leads out of order
        events.append(lead.created(touches=arrival[:1]))
        events += [lead.touched(t, touches=arrival[: i + 2]) for i, t in enumerate(arrival[1:])]
        created = lead.created_at
        previous = "lead"
        for hour, stage in enumerate(wl.stages, start=1):
            events.append(lead.stage(stage, created + timedelta(hours=hour), frm=previous))
            previous = stage
        for deal in wl.deals:
            # A deal event may carry the attribution from before a late touch reached leads.
            seen = Lead(arrival[: rng.randint(1, len(arrival))], lead_id=lead.lead_id)
            opened = max(when(deal.created_day), created)
            events.append(seen.deal_created(deal.deal_id, opened))
            closed = opened + timedelta(days=deal.closed_after_days)
            if deal.outcome == "won":
                events.append(lead.won(deal.deal_id, closed, str(deal.amount)))
            elif deal.outcome == "lost":
                events.append(seen.lost(deal.deal_id, closed, deal.reason, deal.objections))
        events += [lead.revenue(when(day), str(amount)) for day, amount in wl.revenue]
    for camp, kind, count, cost, day in world.campaign_events:
        if kind == "spend":
            events.append(campaign(camp, CAMPAIGNS[camp], kind, when(day), cost=str(cost)))
        else:
            events.append(campaign(camp, CAMPAIGNS[camp], kind, when(day), count=count))
    rng.shuffle(events)
    for duplicate in rng.sample(events, len(events) // 5):  # redeliveries, anywhere later
        events.insert(rng.randint(events.index(duplicate), len(events)), duplicate)
    return events


# --- the recount, from the world (the definitions of docs/kpis.md, written again) -------


def rate(n, d) -> float | None:
    return None if not d else float((Decimal(n) / Decimal(d)).quantize(Decimal("0.0001"), ROUND_HALF_UP))


def cents(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount.quantize(Decimal("0.01"), ROUND_HALF_UP))


def recount(world: World, base: datetime, start: datetime, end: datetime, campaign_id: str | None,
            channel: str | None, attribution: str) -> dict:  # fmt: skip
    def when(day: float) -> datetime:
        return base + timedelta(days=day)

    def inside(moment: datetime) -> bool:
        return start <= moment < end

    impressions = clicks = 0
    spend = Decimal(0)
    for camp, kind, count, cost, day in world.campaign_events:
        if not inside(when(day)) or (campaign_id and camp != campaign_id) or (channel and CAMPAIGNS[camp] != channel):
            continue
        impressions += count if kind == "impression" else 0
        clicks += count if kind == "click" else 0
        spend += cost if kind == "spend" else 0

    funnel = dict.fromkeys(("leads", "mql", "sql", "opportunity", "customer"), 0)
    won = lost = new_customers = 0
    revenue = lifetime = Decimal(0)
    cycles: list[float] = []
    for wl in world.leads:
        touch = (min if attribution == "first_touch" else max)(wl.touches, key=lambda t: t[1])
        if (campaign_id and touch[0] != campaign_id) or (channel and CAMPAIGNS[touch[0]] != channel):
            continue
        created = when(min(d for _, d in wl.touches))
        rank = max([{"mql": 1, "sql": 2}.get(s, 0) for s in wl.stages] + [0])
        closes = []
        for deal in wl.deals:
            opened = max(when(deal.created_day), created)
            closes.append((deal, opened + timedelta(days=deal.closed_after_days)))
        wins = [(deal, closed) for deal, closed in closes if deal.outcome == "won"]
        if inside(created):
            funnel["leads"] += 1
            funnel["mql"] += rank >= 1 or bool(wl.deals)
            funnel["sql"] += rank >= 2 or bool(wl.deals)
            funnel["opportunity"] += bool(wl.deals)
            funnel["customer"] += bool(wins)
        for deal, closed in closes:
            if inside(closed) and deal.outcome == "won":
                won += 1
                revenue += deal.amount
                cycles.append((closed - created).total_seconds() / 86400)
            lost += inside(closed) and deal.outcome == "lost"
        revenue += sum((amount for day, amount in wl.revenue if inside(when(day))), Decimal(0))
        if wins and inside(min(closed for _, closed in wins)):
            new_customers += 1
            lifetime += sum((d.amount for d, _ in wins), Decimal(0)) + sum((a for _, a in wl.revenue), Decimal(0))
    return {
        "impressions": impressions, "clicks": clicks, "spend": cents(spend),
        "funnel": funnel, "leads_generated": funnel["leads"],
        "deals_won": won, "deals_lost": lost, "win_rate": rate(won, won + lost),
        "new_customers": new_customers, "revenue": cents(revenue),
        "cac": cents(spend / new_customers) if new_customers else None,
        "ltv": cents(lifetime / new_customers) if new_customers else None,
        "roi": rate(revenue - spend, spend),
        "ltv_to_cac": rate(lifetime, spend) if new_customers else None,
        # These worlds have no page views (test_metrics_sessions.py recounts those): no visitors.
        "page_views": 0, "sessions": 0, "visitors": 0, "conversion_rate": None,
        "close_rate": rate(funnel["customer"], funnel["leads"]),
        "conversion_rates": {
            "visitor_to_lead": None,
            "click_to_lead": rate(funnel["leads"], clicks),
            "lead_to_mql": rate(funnel["mql"], funnel["leads"]),
            "mql_to_sql": rate(funnel["sql"], funnel["mql"]),
            "sql_to_opportunity": rate(funnel["opportunity"], funnel["sql"]),
            "opportunity_to_customer": rate(funnel["customer"], funnel["opportunity"]),
            "lead_to_customer": rate(funnel["customer"], funnel["leads"]),
        },
        "cycles": cycles,
    }  # fmt: skip


def same_days(served: float | None, expected: float | None) -> bool:
    if served is None or expected is None:
        return served is expected
    return abs(served - expected) <= 0.00011  # Postgres float vs Python float, both rounded to 4 places


async def test_served_kpis_equal_a_recount_from_the_raw_world(make_settings, topic_prefix):
    windows = itertools.count()
    async with running_metrics(make_settings, topic_prefix) as metrics:
        loop = asyncio.get_running_loop()

        async def check(world: World, seed: int) -> None:
            rng = random.Random(seed)  # shuffles, duplicates, late touches: reproducible from the seed
            base = datetime(2200, 1, 1, tzinfo=UTC) + next(windows) * WINDOW
            events = publishable(world, base, rng)
            if events:
                await metrics.send(events)
            cut = base + timedelta(days=rng.uniform(0, 120))
            questions = [
                (base, base + WINDOW, None, None, "first_touch"),
                (base, base + WINDOW, "a", None, "last_touch"),
                (base, cut, None, "email", "first_touch"),
                (cut, base + WINDOW, None, None, "last_touch"),
            ]
            for start, end, campaign_id, channel, attribution in questions:
                params = {"from": start.isoformat(), "to": end.isoformat(), "attribution": attribution}
                params |= {k: v for k, v in (("campaign_id", campaign_id), ("channel", channel)) if v}
                response = await metrics.client.get("/v1/kpis", params=params, headers=AUTH)
                assert response.status_code == 200, response.text
                served = response.json()
                expected = recount(world, base, start, end, campaign_id, channel, attribution)
                cycles = expected.pop("cycles")
                assert {k: served[k] for k in expected} == expected, params
                assert same_days(served["sales_cycle_days"]["average"], statistics.fmean(cycles) if cycles else None)
                assert same_days(served["sales_cycle_days"]["median"], statistics.median(cycles) if cycles else None)

        # Hypothesis drives synchronous tests: it runs in a worker thread and hands each
        # example to this event loop, where the service lives.
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(world=worlds, seed=st.integers(0, 2**32))
        def property_holds(world: World, seed: int) -> None:
            asyncio.run_coroutine_threadsafe(check(world, seed), loop).result(timeout=120)

        await asyncio.to_thread(property_holds)
