"""`make demo` against four real service processes: what it says it posted is what the
KPIs show, visitors included."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.stack import API_TOKEN, ROOT, WRITE_KEY

pytestmark = pytest.mark.e2e


async def test_the_demo_fills_the_funnel_from_visitors_to_customers(stack):
    days = 4
    demo = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "deploy/demo.py", "--days", str(days), "--leads-per-day", "4", "--seed", "3",
            "--ingest", stack.url("ingest"), "--leads", stack.url("leads"), "--sales", stack.url("sales"),
            "--write-key", WRITE_KEY, "--api-token", API_TOKEN,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    posted = dict(re.findall(r"'(page_view|form_submission)': (\d+)", demo.stderr))
    assert int(posted["page_view"]) > int(posted["form_submission"]) > 0

    now = datetime.now(UTC)
    period = {"from": (now - timedelta(days=days + 1)).isoformat(), "to": (now + timedelta(days=1)).isoformat()}
    async with httpx.AsyncClient(
        base_url=stack.url("metrics"), headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10
    ) as metrics:
        for _ in range(300):
            kpis = (await metrics.get("/v1/kpis", params=period)).json()
            if kpis["page_views"] == int(posted["page_view"]):
                break
            await asyncio.sleep(0.2)
    assert kpis["page_views"] == int(posted["page_view"])
    assert kpis["visitors"] >= kpis["leads_generated"] > 0
    assert kpis["sessions"] >= kpis["visitors"]
    assert 0 < kpis["conversion_rate"] == kpis["conversion_rates"]["visitor_to_lead"] <= 1
