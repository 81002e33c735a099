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
