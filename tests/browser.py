"""A website of a test's own and headless Chromium to visit it, for the web tracker's tests.

The site is served over real HTTP (http.server in a thread) at http://www.shop.test:<port>,
a name Chromium resolves to 127.0.0.1 (`--host-resolver-rules`): another origin and another
host than ingest's http://127.0.0.1:<port>, so its cookies are first-party to the site only,
as on a real website, and every post to ingest is cross-origin.
"""

from __future__ import annotations

import html
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.async_api import Browser, Page, Request, async_playwright

CHROMIUM = "/usr/bin/chromium"  # deploy/local/browser.sh installs it
SITE_HOST = "www.shop.test"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--host-resolver-rules=MAP {SITE_HOST} 127.0.0.1"]  # fmt: skip


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def tracker_page(ingest: str, key: str, title: str, body: str = "", consent: bool = False) -> str:
    """A page that loads the tracker from ingest the way the docs tell a website to."""
    required = ' data-consent="required"' if consent else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f'<script src="{ingest}/v1/embudo.js" data-key="{html.escape(key)}"{required} async></script>'
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


class Site:
    """Pages by path ("/landing.html": html). Any query string is ignored, as by a static host."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://{SITE_HOST}:{self.port}{path}"

    @contextmanager
    def serving(self) -> Iterator[Site]:
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                page = pages.get(self.path.partition("?")[0])
                body = (page or "not found").encode()
                self.send_response(200 if page is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


@contextmanager
def shop(ingest: str, key: str, consent: bool = False) -> Iterator[Site]:
    """A small shop loading the tracker on every page, running: a landing page, pricing, and a
    contact form marked data-embudo (form_id demo-request) whose `redirect` is /thanks.html
    (followed when ingest allows the site's host)."""
    site = Site({})
    with site.serving():

        def page(title: str, body: str = "") -> str:
            return tracker_page(ingest, key, title, body, consent=consent)

        contact_form = (
            '<form id="contact" data-embudo="demo-request">'
            '<input name="email" type="email"><input name="budget">'
            f'<input type="hidden" name="redirect" value="{site.url("/thanks.html")}"><button>Send</button></form>'
        )
        site.pages.update(
            {
                "/landing.html": page("Spring offer", '<a id="next" href="/pricing.html">Pricing</a>'),
                "/pricing.html": page("Pricing", '<a id="next" href="/contact.html">Contact</a>'),
                "/contact.html": page("Contact", contact_form),
                "/thanks.html": "<!doctype html><title>Thanks</title><p id='thanks'>Thanks!</p>",
            }
        )
        yield site


class IngestRequests:
    """Every request a page makes to ingest, in the order the browser made them."""

    def __init__(self, page: Page, ingest: str) -> None:
        self.seen: list[Request] = []
        page.on("request", lambda r: self.seen.append(r) if r.url.startswith(ingest) else None)

    def posts(self, path: str = "") -> list[Request]:
        return [r for r in self.seen if r.method == "POST" and f"/v1/{path}" in r.url]


async def tracker_loaded(page: Page) -> None:
    """The tracker has run on this page (it is loaded async)."""
    await page.wait_for_function("window.embudo && typeof window.embudo.page === 'function'")
