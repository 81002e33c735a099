"""Property: whatever the world and however its events arrive (shuffled across and within
topics, some twice, deal events carrying an attribution from before a late touch), the KPIs
metrics serves equal a recount done here, independently, from the world itself: the funnel
and first arrivals at each stage, handoffs and how sales answered them (accepted, rejected,
in time or late, pending) as of a fixed now, the pipeline at a period's end valued as it was
then, the forecast and the pipeline created.

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
from datetime import UTC, date, datetime, time, timedelta
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
    outcome: str  # open | won | lost | rejected (a handoff only)
    closed_after_days: float  # open deals: the time scale of their changes
    amount: Decimal  # won
    reason: str
    objections: list[str]
    handoff: bool = False
    answer_after_hours: float | None = None  # a handoff's acceptance or rejection (None: not answered)
    expected: tuple[Decimal | None, int | None] = (None, None)  # at creation: amount, close day
    change: tuple[float, Decimal | None, int | None] | None = None  # deal.details_changed: (share, amount, day)
    probabilities: tuple[float | None, float | None, float] = (None, None, 0.5)  # created, moved (at share)
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
maybe_amounts = st.none() | amounts
close_days = st.none() | st.integers(0, 250)
probabilities = st.sampled_from([None, 0.1, 0.2, 0.25, 0.5, 0.8])
shares = st.floats(0.05, 0.95, allow_nan=False).map(lambda f: round(f, 3))


@st.composite
def deals(draw) -> Deal:
    handoff = draw(st.booleans())
    outcome = draw(st.sampled_from(["open", "won", "lost", "rejected"] if handoff else ["open", "won", "lost"]))
    answer = draw(st.floats(0.5, 72, allow_nan=False).map(lambda h: round(h, 2)))
    pending = outcome == "open" and draw(st.booleans())
    return Deal(
        created_day=draw(st.integers(0, 60)),
        outcome=outcome,
        closed_after_days=draw(st.floats(0.1, 90, allow_nan=False).map(lambda d: round(d, 3))),
        amount=draw(amounts),
        reason=draw(st.sampled_from(["price", "timing", "competitor"])),
        objections=draw(
            st.lists(st.sampled_from(["too expensive", "no budget", "missing feature"]), max_size=2, unique=True)
        ),
        handoff=handoff,
        answer_after_hours=None if not handoff or pending else answer,
        expected=(draw(maybe_amounts), draw(close_days)),
        change=draw(st.none() | st.tuples(shares, maybe_amounts, close_days)),
        probabilities=(draw(probabilities), draw(probabilities), draw(shares)),
    )


def deal_times(deal: Deal, opened: datetime) -> dict[str, datetime | None]:
    """When each thing happened to a deal (the world's rules, used to publish and to recount)."""
    scale = timedelta(days=deal.closed_after_days)
    closed = opened + scale
    answered = opened + timedelta(hours=deal.answer_after_hours) if deal.answer_after_hours is not None else None
    if deal.outcome == "rejected":
        closed = answered
    accepted = None
    if deal.handoff and deal.outcome != "rejected":
        # Working a handoff accepts it: a win or a loss comes with an acceptance at the latest.
        candidates = [t for t in (answered, closed if deal.outcome in ("won", "lost") else None) if t]
        accepted = min(candidates) if candidates else None
    return {
        "closed": closed if deal.outcome != "open" else None,
        "accepted": accepted,
        "rejected": closed if deal.outcome == "rejected" else None,
        "changed": opened + scale * deal.change[0] if deal.change else None,
        "moved": opened + scale * deal.probabilities[2] if deal.probabilities[1] is not None else None,
    }


world_leads = st.builds(
    WorldLead,
    touches=st.lists(
        st.tuples(st.sampled_from(list(CAMPAIGNS)), days), min_size=1, max_size=3, unique_by=lambda t: t[1]
    ),  # fmt: skip
    stages=st.sampled_from(STAGE_PATHS),
    deals=st.lists(deals(), max_size=2),
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
            times = deal_times(deal, opened)
            amount, close = deal.expected
            events.append(seen.deal_created(
                deal.deal_id, opened, handoff=deal.handoff, probability=deal.probabilities[0],
                amount=str(amount) if amount else None, close=day_of(base, close),
            ))  # fmt: skip
            if deal.change:
                _, amount, close = deal.change
                events.append(seen.details_changed(deal.deal_id, times["changed"], str(amount) if amount else None,
                                                   day_of(base, close)))  # fmt: skip
            if times["moved"]:
                events.append(seen.deal_moved(deal.deal_id, times["moved"], probability=deal.probabilities[1]))
            if times["accepted"]:
                events.append(seen.accepted(deal.deal_id, times["accepted"]))
            if deal.outcome == "won":
                events.append(lead.won(deal.deal_id, times["closed"], str(deal.amount)))
            elif deal.outcome == "lost":
                events.append(seen.lost(deal.deal_id, times["closed"], deal.reason, deal.objections))
            elif deal.outcome == "rejected":
                events.append(seen.rejected(deal.deal_id, times["closed"], deal.reason))
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


def day_of(base: datetime, day: int | None) -> date | None:
    return None if day is None else (base + timedelta(days=day)).date()


# --- the recount, from the world (the definitions of docs/kpis.md, written again) -------

SLA = timedelta(hours=24)


def as_of(values: list[tuple[datetime, object]], moment: datetime | None) -> object:
    """The value of the latest change before `moment` (None: the latest of all)."""
    before = [(at, value) for at, value in values if moment is None or at < moment]
    return max(before, key=lambda pair: pair[0])[1] if before else None


def rate(n, d) -> float | None:
    return None if not d else float((Decimal(n) / Decimal(d)).quantize(Decimal("0.0001"), ROUND_HALF_UP))


def cents(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount.quantize(Decimal("0.01"), ROUND_HALF_UP))


def chosen(wl: WorldLead, campaign_id: str | None, channel: str | None, attribution: str) -> bool:
    """The lead's chosen touch matches the filters."""
    touch = (min if attribution == "first_touch" else max)(wl.touches, key=lambda t: t[1])
    return not ((campaign_id and touch[0] != campaign_id) or (channel and CAMPAIGNS[touch[0]] != channel))


def deal_history(deal: Deal, opened: datetime) -> tuple[list, list]:
    """(amount and close day from each moment on, probability from each moment on)."""
    times = deal_times(deal, opened)
    details = [(opened, deal.expected)] + ([(times["changed"], deal.change[1:])] if deal.change else [])
    chances = [(opened, deal.probabilities[0])] + ([(times["moved"], deal.probabilities[1])] if times["moved"] else [])
    return details, chances


def open_pipeline(world: World, base: datetime, moment: datetime, campaign_id: str | None, channel: str | None,
                  attribution: str) -> tuple[int, Decimal, Decimal]:  # fmt: skip
    """(deals, value, weighted value) open at `moment`, valued as they were then. The deals
    a world left open stay open in every later world's window too."""
    count, value, weighted = 0, Decimal(0), Decimal(0)
    for wl in world.leads:
        if not chosen(wl, campaign_id, channel, attribution):
            continue
        created = base + timedelta(days=min(d for _, d in wl.touches))
        for deal in wl.deals:
            opened = max(base + timedelta(days=deal.created_day), created)
            closed = deal_times(deal, opened)["closed"]
            if opened < moment and (closed is None or closed >= moment):
                details, chances = deal_history(deal, opened)
                amount, p = as_of(details, moment)[0], as_of(chances, moment)
                count += 1
                value += amount or 0
                weighted += amount * Decimal(str(p)) if amount is not None and p is not None else 0
    return count, value, weighted


def recount(world: World, base: datetime, start: datetime, end: datetime, campaign_id: str | None,
            channel: str | None, attribution: str, now: datetime,
            earlier: list[tuple[World, datetime]]) -> dict:  # fmt: skip
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
    reached = dict.fromkeys(("mql", "sql", "opportunity"), 0)
    sla = dict.fromkeys(("handoffs", "accepted", "rejected", "responded_within_sla", "breached", "pending",
                         "pending_overdue"), 0)  # fmt: skip
    responses: list[float] = []
    won = lost = new_customers = 0
    revenue = lifetime = forecast_open = created_value = Decimal(0)
    cycles: list[float] = []
    for wl in world.leads:
        if not chosen(wl, campaign_id, channel, attribution):
            continue
        created = when(min(d for _, d in wl.touches))
        rank = max([{"mql": 1, "sql": 2}.get(s, 0) for s in wl.stages] + [0])
        closes = []
        for deal in wl.deals:
            opened = max(when(deal.created_day), created)
            closes.append((deal, opened + timedelta(days=deal.closed_after_days)))
        wins = [(deal, closed) for deal, closed in closes if deal.outcome == "won"]
        kept = [deal for deal in wl.deals if deal.outcome != "rejected"]
        if inside(created):
            funnel["leads"] += 1
            funnel["mql"] += rank >= 1 or bool(wl.deals)
            funnel["sql"] += rank >= 2 or bool(wl.deals)
            funnel["opportunity"] += bool(kept)
            funnel["customer"] += bool(wins)
        # First arrivals: a stage move (the world's moves come an hour apart), a deal's creation.
        moves = [(created + timedelta(hours=h), {"mql": 1, "sql": 2}.get(name, 0))
                 for h, name in enumerate(wl.stages, start=1)]  # fmt: skip
        openings = [max(when(d.created_day), created) for d in wl.deals]
        for stage, needed in (("mql", 1), ("sql", 2)):
            arrivals = [at for at, r in moves if r >= needed] + openings
            reached[stage] += bool(arrivals) and inside(min(arrivals))
        kept_openings = [max(when(d.created_day), created) for d in kept]
        reached["opportunity"] += bool(kept_openings) and inside(min(kept_openings))
        for deal in wl.deals:
            opened = max(when(deal.created_day), created)
            times = deal_times(deal, opened)
            details, chances = deal_history(deal, opened)
            if deal.handoff and inside(opened):
                sla["handoffs"] += 1
                answer = min((t for t in (times["accepted"], times["rejected"]) if t), default=None)
                if answer is None:
                    sla["pending"] += 1
                    sla["pending_overdue"] += now - opened > SLA
                    sla["breached"] += now - opened > SLA
                else:
                    sla["accepted"] += deal.outcome != "rejected"
                    sla["rejected"] += deal.outcome == "rejected"
                    sla["responded_within_sla"] += answer - opened <= SLA
                    sla["breached"] += answer - opened > SLA
                    responses.append((answer - opened) / timedelta(hours=1))
            if inside(opened) and deal.outcome != "rejected":
                latest_amount = as_of(details, None)[0]
                created_value += latest_amount or 0
            if opened < now and (times["closed"] is None or times["closed"] >= now) and end > now:
                (amount, close), p = as_of(details, now), as_of(chances, now)
                closes_at = day_of(base, close)
                if amount is not None and p is not None and closes_at is not None and closes_at >= now.date():
                    midnight = datetime.combine(closes_at, time(0), UTC)
                    forecast_open += amount * Decimal(str(p)) if inside(midnight) else 0
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
    open_deals, open_value, weighted = 0, Decimal(0), Decimal(0)
    if start < end:  # the deals open at the period's end, or now
        for some_world, its_base in [*earlier, (world, base)]:
            n, value, weight = open_pipeline(some_world, its_base, min(end, now), campaign_id, channel, attribution)
            open_deals, open_value, weighted = open_deals + n, open_value + value, weighted + weight
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
        "stage_reached": {**reached, "customer": new_customers},
        "pipeline_created": cents(created_value),
        "pipeline": {"open_deals": open_deals, "open_value": cents(open_value), "weighted_value": cents(weighted)},
        "forecast": cents(revenue + forecast_open),
        "sla": {**sla, "within_sla_rate": rate(sla["responded_within_sla"], sla["handoffs"])},
        "cycles": cycles,
        "responses": responses,
    }  # fmt: skip


def same_days(served: float | None, expected: float | None) -> bool:
    if served is None or expected is None:
        return served is expected
    return abs(served - expected) <= 0.00011  # Postgres float vs Python float, both rounded to 4 places


async def test_served_kpis_equal_a_recount_from_the_raw_world(make_settings, topic_prefix):
    windows = itertools.count()
    earlier: list[tuple[World, datetime]] = []  # the worlds already published (their open deals stay open)
    async with running_metrics(make_settings, topic_prefix) as metrics:
        loop = asyncio.get_running_loop()

        async def check(world: World, seed: int) -> None:
            rng = random.Random(seed)  # shuffles, duplicates, late touches: reproducible from the seed
            base = datetime(2200, 1, 1, tzinfo=UTC) + next(windows) * WINDOW
            events = publishable(world, base, rng)
            if events:
                await metrics.send(events)
            here = list(earlier)
            earlier.append((world, base))
            cut = base + timedelta(days=rng.uniform(0, 120))
            # Now: after every deal event, or a little after some handoff (pending or not yet overdue).
            handoffs = [max(base + timedelta(days=d.created_day), base + timedelta(days=min(t[1] for t in wl.touches)))
                        for wl in world.leads for d in wl.deals if d.handoff]  # fmt: skip
            now = base + timedelta(days=170)
            if handoffs and rng.random() < 0.5:
                now = rng.choice(handoffs) + timedelta(hours=rng.uniform(0, 48))
            metrics.clock_at(now)
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
                expected = recount(world, base, start, end, campaign_id, channel, attribution, now, here)
                cycles, responses = expected.pop("cycles"), expected.pop("responses")
                median_hours = served["sla"].pop("median_hours_to_response")
                assert {k: served[k] for k in expected} == expected, params
                assert same_days(median_hours, statistics.median(responses) if responses else None)
                assert same_days(served["sales_cycle_days"]["average"], statistics.fmean(cycles) if cycles else None)
                assert same_days(served["sales_cycle_days"]["median"], statistics.median(cycles) if cycles else None)

        # Hypothesis drives synchronous tests: it runs in a worker thread and hands each
        # example to this event loop, where the service lives.
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(world=worlds, seed=st.integers(0, 2**32))
        def property_holds(world: World, seed: int) -> None:
            asyncio.run_coroutine_threadsafe(check(world, seed), loop).result(timeout=120)

        await asyncio.to_thread(property_holds)
