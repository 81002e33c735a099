"""The web tracker (GET /v1/embudo.js) in headless Chromium, on a website of another origin,
against ingest over real HTTP and the real broker: what the page's visitor does is read back
from the page-views and form-submissions topics.

Ingest runs without EMBUDO_CORS_ORIGINS: a request needing a CORS preflight would fail, so
every event that lands proves the tracker posted without one.
"""

from __future__ import annotations

import json
import time

import pytest
from playwright.async_api import BrowserContext, Page, expect
from test_ingest import create_visible_topics
from test_metrics_support import over_http

from services.ingest.main import build_app
from services.ingest.settings import IngestSettings
from shared.topics import FORM_SUBMISSIONS, PAGE_VIEWS
from tests.browser import SITE_HOST, IngestRequests, chromium, shop, tracker_loaded
from tests.support import serve

pytestmark = pytest.mark.integration

KEY = "tracker-write-key"
CAMPAIGN = "?utm_source=google&utm_medium=cpc&utm_campaign=spring"
COOKIE = "embudo_aid"
DAY = 86_400


@pytest.fixture
async def settings(make_settings, topics, topic_prefix) -> IngestSettings:
    # The readers need this test's topics before the service's own background creation runs.
    await create_visible_topics(topics, topic_prefix)
    return await make_settings(IngestSettings, database=False, write_keys=KEY, allowed_redirect_hosts=SITE_HOST)


@pytest.fixture
async def ingest(settings):
    """Ingest over real HTTP, for the browser: its base URL."""
    async with over_http(build_app(settings)) as base_url:
        yield base_url


@pytest.fixture
async def client(settings):
    async with serve(build_app(settings)) as http:
        yield http


@pytest.fixture
async def browser():
    async with chromium() as running:
        yield running


@pytest.fixture
async def page_views(settings, topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + PAGE_VIEWS.name)


@pytest.fixture
async def forms(settings, topic_reader, topic_prefix):
    return await topic_reader(topic_prefix + FORM_SUBMISSIONS.name)


def utm(data) -> tuple[str | None, str | None, str | None]:
    return data.utm.source, data.utm.medium, data.utm.campaign


async def cookie_of(context: BrowserContext) -> str | None:
    values = [c["value"] for c in await context.cookies() if c["name"] == COOKIE]
    return values[0] if values else None


async def visit(page: Page, url: str) -> None:
    await page.goto(url)
    await tracker_loaded(page)


# --- the script itself ------------------------------------------------------------------


async def test_the_tracker_is_small_cacheable_javascript_with_a_304_for_its_etag(client):
    """Small: under 5 KB as served, unminified."""
    response = await client.get("/v1/embudo.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert len(response.content) < 5 * 1024
    etag = response.headers["etag"]
    for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get("/v1/embudo.js", headers={"If-None-Match": held})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    changed = await client.get("/v1/embudo.js", headers={"If-None-Match": '"an-older-version"'})
    assert changed.status_code == 200 and changed.content == response.content


async def test_a_form_submission_posts_as_text_plain_json_with_the_key_parameter(client, forms):
    body = {"form_id": "embudo-identify", "email": "ana@example.com", "anonymous_id": "visitor-9"}
    response = await client.post(
        f"/v1/form-submissions?key={KEY}", content=json.dumps(body), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 202, response.text
    not_json = await client.post(
        f"/v1/form-submissions?key={KEY}", content=b"email=ana", headers={"Content-Type": "text/plain"}
    )
    assert not_json.status_code == 400
    [event] = await forms.events(1)
    assert (event.data.email, event.data.anonymous_id) == ("ana@example.com", "visitor-9")


# --- in the browser ---------------------------------------------------------------------


async def test_a_visitor_keeps_one_id_across_pages_and_its_form_carries_it_with_the_landing_utm(
    ingest, browser, page_views, forms
):
    with shop(ingest, KEY) as site:
        context = await browser.new_context()
        page = await context.new_page()
        requests = IngestRequests(page, ingest)
        await visit(page, site.url("/landing.html" + CAMPAIGN + "&email=ana%40example.com#top"))
        visitor = await cookie_of(context)
        assert visitor and await page.evaluate("embudo.anonymousId()") == visitor
        [cookie] = [c for c in await context.cookies() if c["name"] == COOKIE]
        assert (cookie["domain"], cookie["path"], cookie["sameSite"]) == (SITE_HOST, "/", "Lax")
        assert 364 * DAY < cookie["expires"] - time.time() <= 365 * DAY

        [landing] = await page_views.events(1)
        assert landing.data.anonymous_id == visitor
        assert utm(landing.data) == ("google", "cpc", "spring")
        assert landing.data.url == site.url("/landing.html" + CAMPAIGN)
        [beacon] = requests.posts("page-views")
        assert "example.com" not in (beacon.post_data or "") and "top" not in beacon.post_data  # never left the page
        assert landing.data.title == "Spring offer"

        await page.click("#next")  # to a page without UTM
        await tracker_loaded(page)
        _, pricing = await page_views.events(2)
        assert pricing.data.anonymous_id == visitor and not pricing.data.has_utm
        assert pricing.data.url == site.url("/pricing.html")
        assert pricing.data.referrer == site.url("/landing.html")

        await page.click("#next")
        await tracker_loaded(page)
        await page_views.events(3)
        await page.fill("input[name=email]", "Ana@Example.com")
        await page.fill("input[name=budget]", "5000")
        await page.click("#contact button")
        await expect(page.locator("#thanks")).to_have_text("Thanks!")  # ingest's 303 to the site

        [submission] = await forms.events(1)
        data = submission.data
        assert (data.form_id, data.email, data.anonymous_id) == ("demo-request", "Ana@Example.com", visitor)
        assert utm(data) == ("google", "cpc", "spring")
        assert data.fields == {"budget": "5000"}
        assert len(requests.posts("page-views")) == 3 and len(requests.posts("form-submissions")) == 1


async def test_a_later_landing_with_new_utm_replaces_the_session_utm_and_identify_posts_it(
    ingest, browser, page_views, forms
):
    with shop(ingest, KEY) as site:
        context = await browser.new_context()
        page = await context.new_page()
        await visit(page, site.url("/landing.html" + CAMPAIGN))
        visitor = await cookie_of(context)
        await visit(page, site.url("/landing.html?utm_source=newsletter&utm_medium=email&utm_campaign=news"))
        await visit(page, site.url("/pricing.html"))
        assert await cookie_of(context) == visitor
        views = await page_views.events(3)
        assert [v.data.utm.campaign for v in views] == ["spring", "news", None]

        sent = await page.evaluate(
            "embudo.identify('bo@example.com', {name: 'Bo', company: 'Acme', plan: 'pro', seats: 12})"
        )
        assert sent is True
        [identified] = await forms.events(1)
        data = identified.data
        assert (data.form_id, data.email, data.name) == ("embudo-identify", "bo@example.com", "Bo")
        assert data.company == "Acme"
        assert data.anonymous_id == visitor and data.fields == {"plan": "pro", "seats": "12"}
        assert utm(data) == ("newsletter", "email", "news")
        assert data.page_url == site.url("/pricing.html")

        # A single-page app's route change: embudo.page() sends it.
        await page.evaluate("history.pushState({}, '', '/app/welcome?utm_campaign=onboarding&token=secret')")
        assert await page.evaluate("embudo.page()") is True
        *_, route = await page_views.events(4)
        assert route.data.url == site.url("/app/welcome?utm_campaign=onboarding") and route.data.anonymous_id == visitor


async def test_with_consent_required_nothing_is_stored_or_sent_before_consent(ingest, browser, page_views, forms):
    with shop(ingest, KEY, consent=True) as site:
        context = await browser.new_context()
        page = await context.new_page()
        requests = IngestRequests(page, ingest)
        await visit(page, site.url("/contact.html" + CAMPAIGN))
        assert await page.evaluate("embudo.page()") is False
        assert await page.evaluate("embudo.identify('cy@example.com')") is False
        assert await context.cookies() == []
        assert await page.evaluate("document.cookie + sessionStorage.length + localStorage.length") == "00"
        assert await page.locator("#contact input[name=anonymous_id]").count() == 0

        await page.evaluate("embudo.consent(true)")
        [view] = await page_views.events(1)
        visitor = await cookie_of(context)
        assert visitor and view.data.anonymous_id == visitor and view.data.utm.campaign == "spring"
        # The one post so far is the page view after consent: nothing was sent before it.
        assert [r.url.split("?")[0] for r in requests.posts()] == [f"{ingest}/v1/page-views"]
        assert await page.locator("#contact input[name=anonymous_id]").input_value() == visitor
        assert await page.locator("#contact input[name=utm_campaign]").input_value() == "spring"

        # Consent is remembered by the cookie itself: the next page is tracked straight away.
        await visit(page, site.url("/pricing.html"))
        _, pricing = await page_views.events(2)
        assert pricing.data.anonymous_id == visitor

        # Withdrawn: the cookie goes, and the following pages send nothing.
        await page.evaluate("embudo.consent(false)")
        assert await context.cookies() == [] and await page.evaluate("sessionStorage.length") == 0
        assert await page.evaluate("embudo.page()") is False
        await visit(page, site.url("/landing.html"))
        assert await page.evaluate("embudo.identify('cy@example.com')") is False
        assert await context.cookies() == []
        # A fresh consent is a new visitor; the posts in between were none.
        await page.evaluate("embudo.consent(true)")
        _, _, again = await page_views.events(3)
        assert again.data.anonymous_id not in (None, visitor) and again.data.anonymous_id == await cookie_of(context)
        assert len(requests.posts()) == 3 and len(requests.posts("page-views")) == 3


async def test_an_opt_out_without_consent_mode_is_remembered_on_later_pages(ingest, browser, page_views):
    with shop(ingest, KEY) as site:
        context = await browser.new_context()
        page = await context.new_page()
        requests = IngestRequests(page, ingest)
        await visit(page, site.url("/landing.html"))
        [first] = await page_views.events(1)
        await page.evaluate("embudo.consent(false)")
        assert await cookie_of(context) is None
        await visit(page, site.url("/pricing.html"))
        assert await page.evaluate("embudo.anonymousId()") is None and await cookie_of(context) is None
        await page.evaluate("embudo.consent(true)")  # opted back in: tracked again, as a new visitor
        _, again = await page_views.events(2)
        assert again.data.anonymous_id != first.data.anonymous_id
        assert len(requests.posts("page-views")) == 2  # none from the opted-out page load
