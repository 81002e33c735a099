"""A visitor in headless Chromium, tracked by the web tracker on a website of its own origin,
through the four services as processes: the campaign visit before the form is the lead's
first touch, and metrics counts the visitor who became a lead."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from playwright.async_api import Page

from tests.browser import chromium, shop, tracker_loaded
from tests.e2e.stack import API_TOKEN, WRITE_KEY
from tests.support import eventually

pytestmark = pytest.mark.e2e

EMAIL = "dana@example.com"
SPRING = "?utm_source=google&utm_medium=cpc&utm_campaign=spring"
NEWS = "?utm_source=newsletter&utm_medium=email&utm_campaign=news"


async def visit(page: Page, url: str) -> str:
    """Load a page and wait for its page view to be posted; the visitor's id."""
    async with page.expect_request(lambda r: r.method == "POST" and "/v1/page-views" in r.url):
        await page.goto(url)
        await tracker_loaded(page)
    return await page.evaluate("embudo.anonymousId()")


async def test_a_campaign_visitor_who_later_fills_a_form_is_a_lead_first_touched_by_that_visit(stack):
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    leads = httpx.AsyncClient(base_url=stack.url("leads"), headers=auth, timeout=30)
    metrics = httpx.AsyncClient(base_url=stack.url("metrics"), headers=auth, timeout=30)
    try:
        async with chromium() as browser:
            with shop(stack.url("ingest"), WRITE_KEY) as site:
                page = await (await browser.new_context()).new_page()
                visitor = await visit(page, site.url("/landing.html" + SPRING))
                assert await visit(page, site.url("/pricing.html")) == visitor
                # Later, back from a newsletter: the session's UTM is now that one.
                assert await visit(page, site.url("/landing.html" + NEWS)) == visitor
                assert await visit(page, site.url("/contact.html")) == visitor
                await page.fill("input[name=email]", EMAIL)
                async with page.expect_navigation():
                    await page.click("#contact button")
                assert '"accepted":1' in await page.content()  # ingest's answer (no redirect host allowed here)

        async def lead_with_every_touch():
            items = (await leads.get("/v1/leads", params={"email": EMAIL})).json()["items"]
            if not items:
                return None
            detail = (await leads.get(f"/v1/leads/{items[0]['lead_id']}")).json()
            return detail if detail["touch_count"] == 3 else None  # two campaign visits and the form

        lead = await eventually(lead_with_every_touch, timeout=60, interval=0.3)
        first, last = lead["first_touch"], lead["last_touch"]
        assert first["kind"] == "page_view"  # the campaign visit, not the form
        assert (first["campaign_id"], first["channel"], first["source"]) == ("spring", "cpc", "google")
        assert first["page_url"] == site.url("/landing.html" + SPRING)
        assert (last["kind"], last["form_id"], last["campaign_id"]) == ("form_submission", "demo-request", "news")
        assert [t["campaign_id"] for t in lead["touches"]] == ["spring", "news", "news"]
        assert lead["anonymous_ids"] == [visitor]
        assert datetime.fromisoformat(first["occurred_at"]) < datetime.fromisoformat(last["occurred_at"])

        async def visitor_counted_as_converted():
            kpis = (await metrics.get("/v1/kpis")).json()
            converted = kpis.get("visitors", 0) >= 1 and (kpis.get("conversion_rates") or {}).get("visitor_to_lead")
            return kpis if converted and kpis["leads_generated"] == 1 else None

        kpis = await eventually(visitor_counted_as_converted, timeout=60, interval=0.3)
        assert kpis["visitors"] >= 1 and kpis["conversion_rates"]["visitor_to_lead"] > 0
        assert kpis["conversion_rate"] == kpis["conversion_rates"]["visitor_to_lead"]  # the headline
    finally:
        await leads.aclose()
        await metrics.aclose()
