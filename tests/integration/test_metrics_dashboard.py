"""The dashboard in headless Chromium (Debian's package), served over real HTTP by uvicorn:
it loads, shows what the API returns, and follows new events as they are applied."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import async_playwright, expect
from test_metrics_support import AUTH, TOKEN, Lead, campaign, page_view, running_metrics

from tests.support import eventually

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_MS = 20_000  # how long the page may take to catch up (it polls every 0.5 s here)


def shown(value, kind: str, currency: str = "EUR") -> str:
    """How dashboard.js formats a value."""
    if value is None:
        return "–"
    if kind == "money":
        return f"{value} {currency}"
    if kind == "ratio":
        return f"{value * 100:.2f}%"
    if kind == "days":
        return f"{value:.1f} d"
    if kind == "hours":
        return f"{value:.1f} h"
    if kind == "number":
        return f"{value:.2f}"
    return str(value)


def kpi(body: dict, path: str):
    for key in path.split("."):
        body = body[key]
    return body


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_dashboard_shows_the_api_numbers_and_updates_after_new_events(make_settings, topic_prefix, browser):
    now = datetime.now(UTC)
    ana = Lead([("spring", "cpc", now - timedelta(days=3))], anonymous_ids=["ana-phone"])
    bo = Lead([("spring", "cpc", now - timedelta(days=2)), ("news", "email", now - timedelta(days=1))])
    deal = uuid.uuid4()
    initial = [
        campaign("spring", "cpc", "click", now - timedelta(days=3), count=20),
        campaign("spring", "cpc", "spend", now - timedelta(days=3), cost="120.00"),
        ana.created(), ana.stage("sql", now - timedelta(days=3) + timedelta(hours=1)),
        ana.deal_created(deal, now - timedelta(days=2)), ana.won(deal, now - timedelta(days=1), "480.00"),
        bo.created(touches=bo.touches[:1]), bo.touched(bo.touches[1]),
        # Visitors: ana's phone before her form; someone else, twice (an hour apart: two sessions).
        page_view("ana-phone", now - timedelta(days=3, minutes=10), "spring", "cpc"),
        page_view("ana-phone", now - timedelta(days=3, minutes=5)),
        page_view("someone", now - timedelta(days=2), "spring", "cpc"),
        page_view("someone", now - timedelta(days=2) + timedelta(hours=1)),
    ]  # fmt: skip
    async with running_metrics(make_settings, topic_prefix, http=True, dashboard_poll_seconds=0.5) as metrics:
        await metrics.send(initial)
        api = (await metrics.client.get("/v1/kpis", headers=AUTH)).json()
        assert (api["leads_generated"], api["new_customers"], api["revenue"]) == (2, 1, "480.00")
        assert (api["visitors"], api["sessions"], api["page_views"], api["conversion_rate"]) == (2, 3, 4, 0.5)

        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        statuses: list[tuple[str, int]] = []
        page.on("response", lambda r: statuses.append((r.url, r.status)) if "/v1/" in r.url else None)

        await page.goto(str(metrics.client.base_url.join("/")))
        await expect(page.locator("#status")).to_contain_text("Enter the API token")  # not pre-filled in test
        await page.fill("#token", TOKEN)
        await page.click("#save-token")

        # Every tile shows what the API says, formatted.
        tiles = page.locator(".tile")
        await expect(page.locator('.tile[data-kpi="leads_generated"] .value')).to_have_text("2", timeout=WAIT_MS)
        for i in range(await tiles.count()):
            tile = tiles.nth(i)
            name, kind = await tile.get_attribute("data-kpi"), await tile.get_attribute("data-format")
            await expect(tile.locator(".value")).to_have_text(shown(kpi(api, name), kind))
        funnel = await page.evaluate("Chart.getChart('funnel-chart').data.datasets[0].data")
        # The funnel starts at the visitors.
        assert funnel == [2, *(api["funnel"][s] for s in ("leads", "mql", "sql", "opportunity", "customer"))]
        datasets = "Chart.getChart('timeseries-chart').data.datasets"
        visitors, leads = await page.evaluate(f"{datasets}.slice(0, 2).map(d => d.data)")
        assert sum(leads) == 2 and len(leads) == 30  # 30 daily buckets, the two leads among them
        assert sum(visitors) == 2 and len(visitors) == 30
        spring = page.locator('#breakdown-campaign tbody tr[data-key="spring"] td')
        await expect(spring.nth(1)).to_have_text("2")  # visitors: ana (a lead) and someone
        await expect(spring.nth(2)).to_have_text("2")  # sessions: ana's, someone's first
        await expect(spring.nth(3)).to_have_text("2")  # leads: ana, bo (first touch)
        await expect(page.locator("#campaign option")).to_have_text(["All campaigns", "spring"])

        # New events: a third lead and a lost deal with an objection; the page follows.
        cy = Lead([("spring", "cpc", now - timedelta(hours=5))], anonymous_ids=["cy-laptop"])
        lost = uuid.uuid4()
        await metrics.send([
            cy.created(), cy.stage("sql", now - timedelta(hours=4)),
            cy.deal_created(lost, now - timedelta(hours=3)),
            cy.lost(lost, now - timedelta(hours=2), "price", ["too expensive"]),
            page_view("cy-laptop", now - timedelta(hours=6)),  # arrives after her form
        ])  # fmt: skip
        updated = (await metrics.client.get("/v1/kpis", headers=AUTH)).json()
        assert (updated["leads_generated"], updated["deals_lost"], updated["visitors"]) == (3, 1, 3)
        await expect(page.locator('.tile[data-kpi="leads_generated"] .value')).to_have_text("3", timeout=WAIT_MS)
        await expect(page.locator('.tile[data-kpi="visitors"] .value')).to_have_text("3", timeout=WAIT_MS)
        await expect(page.locator('.tile[data-kpi="conversion_rate"] .value')).to_have_text("66.67%", timeout=WAIT_MS)
        await expect(page.locator('.tile[data-kpi="win_rate"] .value')).to_have_text(
            shown(updated["win_rate"], "ratio"), timeout=WAIT_MS
        )
        await expect(page.locator("#objections li")).to_have_text(["too expensive — 1"], timeout=WAIT_MS)
        await expect(page.locator("#lost-reasons li")).to_have_text(["price — 1"], timeout=WAIT_MS)

        # Polling an unchanged state is answered with 304s.
        async def saw_not_modified() -> bool:
            return any(status == 304 and "/v1/kpis?" in url for url, status in statuses)

        await eventually(saw_not_modified, timeout=10)
        assert not errors, errors
        assert all(status in (200, 304) for _, status in statuses), statuses


async def test_dashboard_asks_in_the_browsers_time_zone_until_another_is_picked(make_settings, topic_prefix, browser):
    async with running_metrics(make_settings, topic_prefix, http=True, dashboard_poll_seconds=0.5) as metrics:
        context = await browser.new_context(timezone_id="Europe/Madrid")
        page = await context.new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/v1/kpis?" in r.url else None)
        await page.goto(str(metrics.client.base_url.join("/")))
        await page.fill("#token", TOKEN)
        await page.click("#save-token")
        await expect(page.locator("#tz")).to_have_value("Europe/Madrid")

        async def asked_in(zone: str) -> bool:
            return any(f"tz={zone.replace('/', '%2F')}" in url for url in asked)

        await eventually(lambda: asked_in("Europe/Madrid"), timeout=10)
        await page.select_option("#tz", "America/New_York")
        await eventually(lambda: asked_in("America/New_York"), timeout=10)
        await context.close()


def goal_text(goal: dict) -> str:
    """How dashboard.js captions a goal's progress bar."""

    def amount(value) -> str:
        if value is None:
            return "–"
        if goal["metric"] in ("revenue", "pipeline_created"):
            return f"{value} {goal['currency']}"
        return str(value) if isinstance(value, int) else f"{value:.1f}"

    p = goal["progress"]
    return (f"{amount(p['actual'])} / {amount(p['target'])} · expected {amount(p['expected_to_date'])} · "
            f"pace {shown(p['pace'], 'number')} · projected {amount(p['projected'])}")  # fmt: skip


async def test_dashboard_shows_goals_the_sla_its_overdue_queue_the_pipeline_and_feedback(
    make_settings, topic_prefix, browser
):  # fmt: skip
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    today = datetime.combine(now.date(), datetime.min.time(), UTC)
    ana, bo, cy, di, ed = (Lead([("spring", "cpc", now - timedelta(days=6))]) for _ in range(5))
    fe = Lead([("news", "email", now - timedelta(days=6))])
    handoffs = {name: uuid.uuid4() for name in ("ana", "bo", "cy", "di", "fe")}
    won, lost = uuid.uuid4(), uuid.uuid4()
    events = [
        # ana: accepted in 2 h and worked on (an amount, expected to close in the period); bo:
        # waiting 2 days (overdue); cy: waiting 5 h; di: rejected; fe: accepted after 30 h.
        *(lead.created() for lead in (ana, bo, cy, di, ed, fe)),
        ana.deal_created(handoffs["ana"], now - timedelta(days=3), handoff=True, probability=0.2),
        ana.accepted(handoffs["ana"], now - timedelta(days=3) + timedelta(hours=2)),
        ana.details_changed(handoffs["ana"], now - timedelta(days=2), "4000.00", (now + timedelta(days=1)).date()),
        bo.deal_created(handoffs["bo"], now - timedelta(days=2), handoff=True, probability=0.2),
        cy.deal_created(handoffs["cy"], now - timedelta(hours=5), handoff=True, probability=0.2),
        di.deal_created(handoffs["di"], now - timedelta(days=4), handoff=True, probability=0.2),
        di.rejected(handoffs["di"], now - timedelta(days=4) + timedelta(hours=1), "not a fit"),
        fe.deal_created(handoffs["fe"], now - timedelta(days=5), handoff=True, probability=0.2),
        fe.accepted(handoffs["fe"], now - timedelta(days=5) + timedelta(hours=30)),
        fe.objections_recorded(handoffs["fe"], now - timedelta(days=4), [("price", "Too expensive")]),
        ed.stage("disqualified", now - timedelta(days=5), reason="student"),
        ed.deal_created(won, now - timedelta(days=5), amount="900.00", probability=0.5),
        ed.won(won, now - timedelta(days=1), "900.00"),
        ed.deal_created(lost, now - timedelta(days=5)),
        ed.lost(lost, now - timedelta(days=2), "price", normalised=[("price", "too pricey"), ("timing", "not now")]),
    ]  # fmt: skip
    period = {
        "from": (today - timedelta(days=10)).date().isoformat(),
        "to": (today + timedelta(days=20)).date().isoformat(),
    }
    async with running_metrics(make_settings, topic_prefix, http=True, dashboard_poll_seconds=0.5) as metrics:
        metrics.clock_at(now)
        await metrics.send(events)
        goals = {
            "mql": {"name": "MQLs", "team": "marketing", "metric": "mql", "target": 20, **period},
            "revenue": {"name": "Revenue", "team": "sales", "metric": "revenue", "target": "1000.00", **period},
            "later": {"name": "Next quarter", "team": "sales", "metric": "deals_won", "target": 5,
                      "from": (today + timedelta(days=60)).date().isoformat(),
                      "to": (today + timedelta(days=150)).date().isoformat()},
        }  # fmt: skip
        ids = {name: uuid.uuid4() for name in goals}
        for name, body in goals.items():
            assert (await metrics.client.put(f"/v1/goals/{ids[name]}", json=body, headers=AUTH)).status_code == 201
        api = (await metrics.client.get("/v1/kpis", headers=AUTH)).json()
        assert (api["sla"]["handoffs"], api["sla"]["pending_overdue"], api["pipeline"]["open_deals"]) == (5, 1, 4)
        queue = (await metrics.client.get("/v1/sla/overdue", headers=AUTH)).json()
        assert [item["deal_id"] for item in queue["items"]] == [str(handoffs["bo"])]
        active = (await metrics.client.get("/v1/goals", params={"active_at": now.isoformat()}, headers=AUTH)).json()
        assert [g["goal_id"] for g in active["items"]] == [str(ids["mql"]), str(ids["revenue"])]

        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(str(metrics.client.base_url.join("/")))
        await page.fill("#token", TOKEN)
        await page.click("#save-token")
        await expect(page.locator('.tile[data-kpi="sla.handoffs"] .value')).to_have_text("5", timeout=WAIT_MS)

        # Every tile (the SLA, the pipeline and the forecast among them) shows the API's number.
        tiles = page.locator(".tile")
        for i in range(await tiles.count()):
            tile = tiles.nth(i)
            name, kind = await tile.get_attribute("data-kpi"), await tile.get_attribute("data-format")
            await expect(tile.locator(".value")).to_have_text(shown(kpi(api, name), kind))

        # The goals running now, per team, with their bars, numbers and status.
        for goal in active["items"]:
            item = page.locator(f'#goals .team[data-team="{goal["team"]}"] li[data-goal="{goal["goal_id"]}"]')
            await expect(item.locator(".goal-numbers")).to_have_text(goal_text(goal))
            await expect(item.locator(".goal-status")).to_have_text(goal["progress"]["status"].replace("_", " "))
            await expect(item).to_have_attribute("data-status", goal["progress"]["status"])
        await expect(page.locator("#goals li.goal")).to_have_count(2)  # next quarter's is not running
        revenue = next(g for g in active["items"] if g["metric"] == "revenue")
        assert (revenue["progress"]["actual"], revenue["progress"]["status"]) == ("900.00", "on_track")  # ed's win
        width = await page.locator(f'li[data-goal="{ids["revenue"]}"] .fill').evaluate("e => e.style.width")
        assert float(width.removesuffix("%")) == pytest.approx(90)

        # The overdue queue, and the feedback lists.
        await expect(page.locator("#overdue tbody tr")).to_have_count(1)
        row = page.locator(f'#overdue tbody tr[data-deal="{handoffs["bo"]}"] td')
        await expect(row.nth(0)).to_have_text(shown(queue["items"][0]["hours_waiting"], "hours"))  # 48.0 h
        await expect(page.locator("#sla-hours")).to_have_text("(24 h)")
        await expect(page.locator("#rejection-reasons li")).to_have_text(["not a fit — 1"])
        await expect(page.locator("#disqualification-reasons li")).to_have_text(["student — 1"])
        await expect(page.locator("#objections-lost li")).to_have_text(
            ["price — 1: too pricey (1)", "timing — 1: not now (1)"]
        )
        await expect(page.locator("#objections-open li")).to_have_text(["price — 1: Too expensive (1)"])
        await expect(page.locator("#objections-won li")).to_have_count(0)

        # Sales answers bo and a goal is raised: the page follows.
        await metrics.send([bo.accepted(handoffs["bo"], now - timedelta(minutes=1))])
        await metrics.client.put(f"/v1/goals/{ids['mql']}", json={**goals["mql"], "target": 40}, headers=AUTH)
        await expect(page.locator("#overdue tbody tr")).to_have_count(0, timeout=WAIT_MS)
        await expect(page.locator('.tile[data-kpi="sla.pending_overdue"] .value')).to_have_text("0", timeout=WAIT_MS)
        raised = (await metrics.client.get(f"/v1/goals/{ids['mql']}", headers=AUTH)).json()
        await expect(page.locator(f'li[data-goal="{ids["mql"]}"] .goal-numbers')).to_have_text(
            goal_text(raised), timeout=WAIT_MS
        )
        assert not errors, errors
