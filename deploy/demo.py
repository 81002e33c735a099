"""Demo traffic: believable funnel data driven only through Embudo's public HTTP APIs.

    make demo                                 # 90 days of history against `make dev`
    make demo DEMO_ARGS="--days 30 --seed 7 --leads-per-day 10"

Campaigns on several channels get daily impressions, clicks and spend; every click lands a
visitor who browses a few pages, some visitors arrive without UTM, and some of them submit
forms (some come back, now and then from another device); marketing qualifies leads, sales works
the deals that follow, wins some with amounts, loses others with reasons and objections,
and records renewals. Every timestamp lies in the past, so the history fills the dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    channel: str
    source: str
    daily_budget: int  # euros
    daily_impressions: int
    click_rate: float  # clicks per impression
    lead_rate: float  # form submissions per click


CAMPAIGNS = (
    Campaign("spring-search", "cpc", "google", 900, 7200, 0.045, 0.08),
    Campaign("brand-social", "social", "linkedin", 700, 4800, 0.012, 0.05),
    Campaign("newsletter", "email", "mailchimp", 80, 600, 0.09, 0.06),
    Campaign("retargeting", "display", "criteo", 350, 3000, 0.006, 0.10),
)
LOST_REASONS = {
    "price": ["too expensive", "budget frozen until next year"],
    "competitor": ["chose a cheaper competitor", "missing integration with their CRM"],
    "timing": ["not a priority this quarter"],
    "no decision": ["could not reach the decision maker", "champion left the company"],
}
FIRST_NAMES = ["ana", "bruno", "carla", "diego", "elena", "fabio", "gala", "hugo", "ines", "jorge", "lucia", "marco"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Soylent", "Stark", "Wayne", "Tyrell", "Cyberdyne"]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def item_id(item: dict, *names: str) -> str:
    for name in names:
        if item.get(name):
            return str(item[name])
    raise KeyError(f"none of {names} in {sorted(item)}")


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.start = (self.now - timedelta(days=args.days)).replace(hour=0, minute=0, second=0)
        self.ingest = httpx.AsyncClient(
            base_url=args.ingest, headers={"Authorization": f"Bearer {args.write_key}"}, timeout=30
        )
        auth = {"Authorization": f"Bearer {args.api_token}"}
        self.leads = httpx.AsyncClient(base_url=args.leads, headers=auth, timeout=30)
        self.sales = httpx.AsyncClient(base_url=args.sales, headers=auth, timeout=30)
        self.limit = asyncio.Semaphore(args.concurrency)
        self.counts: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    async def call(self, client: httpx.AsyncClient, method: str, url: str, **kwargs) -> httpx.Response:
        async with self.limit:
            for attempt in range(8):
                response = await client.request(method, url, **kwargs)
                if response.status_code not in (429, 503):
                    return response
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")) * (attempt + 1) / 2)
            return response

    def happened(self, moment: datetime) -> bool:
        """Steps that would fall in the future haven't happened yet: the lead or deal stays open."""
        return moment < self.now - timedelta(minutes=1)

    async def run(self) -> None:
        submissions = self.marketing_history()
        await self.post_batches(submissions)
        print(f"posted {self.counts}", file=sys.stderr)
        emails = sorted({s["email"].strip().lower() for s in submissions if s["type"] == "form_submission"})
        leads = await self.wait_for_leads(emails)
        await asyncio.gather(*(self.work_lead(lead) for lead in leads))
        for client in (self.ingest, self.leads, self.sales):
            await client.aclose()
        print("demo done: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))

    def marketing_history(self) -> list[dict]:
        items: list[dict] = []
        visitors: list[str] = []
        for day in range(self.args.days):
            date = self.start + timedelta(days=day)
            weekday_factor = 0.6 if date.weekday() >= 5 else 1.0
            for campaign in CAMPAIGNS:
                impressions = int(campaign.daily_impressions * self.rng.uniform(0.7, 1.3) * weekday_factor)
                clicks = max(1, int(impressions * campaign.click_rate * self.rng.uniform(0.7, 1.3)))
                spend = Decimal(campaign.daily_budget * self.rng.uniform(0.8, 1.1)).quantize(Decimal("0.01"))
                at = iso(date + timedelta(hours=23))
                base = {
                    "type": "campaign_event",
                    "campaign_id": campaign.campaign_id,
                    "channel": campaign.channel,
                    "occurred_at": at,
                }
                items += [
                    {**base, "event": "impression", "count": impressions},
                    {**base, "event": "click", "count": clicks},
                    {**base, "event": "spend", "cost": {"amount": str(spend), "currency": self.args.currency}},
                ]
                leads_today = sum(self.rng.random() < campaign.lead_rate for _ in range(clicks))
                leads_today = max(0, round(leads_today * self.args.leads_per_day / 20))
                # Every click lands a visit (scaled like the leads, so the rates stay believable).
                visits = max(leads_today, round(clicks * self.args.leads_per_day / 20))
                items += self.visits(date, visits, leads_today, visitors, campaign)
            organic = self.rng.randint(0, max(1, self.args.leads_per_day // 8))  # no UTM
            items += self.visits(date, organic * 10, organic, visitors, None)
        self.rng.shuffle(items)  # arrival order need not follow event time
        return items

    def visits(
        self, date: datetime, count: int, converting: int, visitors: list[str], campaign: Campaign | None
    ) -> list[dict]:
        """`count` visitors' page views on one day: a landing page (with the campaign's UTM)
        and a few more pages minutes apart; the first `converting` of them then submit a form."""
        items: list[dict] = []
        for n in range(count):
            anonymous_id = f"v-{self.rng.getrandbits(48):012x}"
            at = date + timedelta(hours=self.rng.uniform(7, 22))
            query = ""
            if campaign is not None:
                utm = {"source": campaign.source, "medium": campaign.channel, "campaign": campaign.campaign_id}
                query = "?" + "&".join(f"utm_{name}={value}" for name, value in utm.items())
            for page in range(self.rng.randint(1, 4)):
                path = self.rng.choice(["", "pricing", "product", "blog/funnels", "customers"])
                items.append({
                    "type": "page_view",
                    "anonymous_id": anonymous_id,
                    "url": f"https://www.example.com/{path}{query if page == 0 else ''}",
                    "title": path.title() or "Home",
                    "occurred_at": iso(at),
                })  # fmt: skip
                at += timedelta(minutes=self.rng.uniform(0.5, 6))
            if n < converting:
                items.append(self.submission(at, visitors, campaign, anonymous_id))
        return items

    def submission(self, at: datetime, visitors: list[str], campaign: Campaign | None, anonymous_id: str) -> dict:
        if visitors and self.rng.random() < 0.12:
            email = self.rng.choice(visitors)  # a returning visitor: a new touch, not a new lead
            email = email.upper() if self.rng.random() < 0.3 else f"  {email} "
        else:
            email = f"{self.rng.choice(FIRST_NAMES)}.{len(visitors)}@{self.rng.choice(COMPANIES).lower()}.example"
            visitors.append(email)
        item = {
            "type": "form_submission",
            "occurred_at": iso(at),
            "anonymous_id": anonymous_id,
            "form_id": self.rng.choice(["contact", "demo-request", "ebook-download", "pricing"]),
            "email": email,
            "name": email.split(".")[0].strip().title(),
            "company": self.rng.choice(COMPANIES),
            "page_url": "https://www.example.com/" + self.rng.choice(["pricing", "product", "blog/funnels"]),
        }
        if campaign is not None:
            item["utm"] = {"source": campaign.source, "medium": campaign.channel, "campaign": campaign.campaign_id}
        return item

    async def post_batches(self, items: list[dict]) -> None:
        async def post(batch: list[dict]) -> None:
            response = await self.call(self.ingest, "POST", "/v1/batch", json={"batch": batch})
            response.raise_for_status()
            for item in batch:
                self.count(item["type"])

        await asyncio.gather(*(post(items[i : i + 100]) for i in range(0, len(items), 100)))

    async def wait_for_leads(self, emails: list[str]) -> list[dict]:
        """Leads are created asynchronously from the submissions; poll until all are there."""
        found: dict[str, dict] = {}
        for _ in range(120):
            cursor = None
            while True:
                params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
                page = (await self.call(self.leads, "GET", "/v1/leads", params=params)).json()
                for lead in page["items"]:
                    found[lead["email"]] = lead
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            if all(e in found for e in emails):
                return [found[e] for e in emails]
            await asyncio.sleep(1)
        raise SystemExit(f"only {len(found)} of {len(emails)} leads appeared; is the leads service running?")

    async def work_lead(self, lead: dict) -> None:
        lead_id = item_id(lead, "lead_id", "id")
        created = datetime.fromisoformat(lead["created_at"])
        roll = self.rng.random()
        if roll < 0.15:
            if self.happened(disqualified_at := created + timedelta(days=1)):
                await self.move_lead(lead_id, "disqualified", disqualified_at, "not our market")
            return
        if roll < 0.55:
            return  # still nurturing
        mql_at = created + timedelta(days=self.rng.uniform(0.5, 4))
        if not self.happened(mql_at):
            return
        await self.move_lead(lead_id, "mql", mql_at, "downloaded the pricing guide")
        if self.rng.random() < 0.4:
            return
        sql_at = mql_at + timedelta(days=self.rng.uniform(1, 6))
        if not self.happened(sql_at):
            return
        await self.move_lead(lead_id, "sql", sql_at, "budget and need confirmed")
        await self.work_deal(lead_id, sql_at)

    async def move_lead(self, lead_id: str, stage: str, at: datetime, reason: str) -> None:
        response = await self.call(
            self.leads,
            "POST",
            f"/v1/leads/{lead_id}/stage",
            json={"stage": stage, "reason": reason, "occurred_at": iso(at)},
        )
        if response.status_code == 200:
            self.count(f"lead->{stage}")

    async def work_deal(self, lead_id: str, sql_at: datetime) -> None:
        deal = None
        for _ in range(120):  # the deal is created from the lead's SQL event
            items = (await self.call(self.sales, "GET", "/v1/deals", params={"lead_id": lead_id})).json()["items"]
            if items:
                deal = items[0]
                break
            await asyncio.sleep(0.5)
        if deal is None:
            raise SystemExit(f"no deal appeared for lead {lead_id}; is the sales service running?")
        deal_id = item_id(deal, "deal_id", "id")
        at = sql_at
        for stage in ("proposal", "negotiation"):
            if self.rng.random() < 0.2:
                break  # stalls here: an open deal
            at = at + timedelta(days=self.rng.uniform(2, 10))
            if not self.happened(at):
                return
            await self.call(self.sales, "PATCH", f"/v1/deals/{deal_id}", json={"stage": stage, "occurred_at": iso(at)})
        else:
            closed_at = at + timedelta(days=self.rng.uniform(1, 12))
            if not self.happened(closed_at):
                return
            if self.rng.random() < 0.55:
                amount = Decimal(self.rng.choice([1200, 2400, 4800, 9600]) * self.rng.uniform(0.8, 1.2))
                await self.call(
                    self.sales,
                    "POST",
                    f"/v1/deals/{deal_id}/won",
                    json={
                        "amount": str(amount.quantize(Decimal("0.01"))),
                        "currency": self.args.currency,
                        "occurred_at": iso(closed_at),
                    },
                )
                self.count("deals won")
                await self.renewals(lead_id, closed_at)
            else:
                reason = self.rng.choice(sorted(LOST_REASONS))
                objections = self.rng.sample(LOST_REASONS[reason], k=self.rng.randint(1, len(LOST_REASONS[reason])))
                await self.call(
                    self.sales,
                    "POST",
                    f"/v1/deals/{deal_id}/lost",
                    json={"reason": reason, "objections": objections, "occurred_at": iso(closed_at)},
                )
                self.count("deals lost")

    async def renewals(self, lead_id: str, won_at: datetime) -> None:
        at = won_at + timedelta(days=30)
        while at < self.now and self.rng.random() < 0.7:
            kind = "upsell" if self.rng.random() < 0.2 else "renewal"
            amount = Decimal(self.rng.choice([100, 200, 400])).quantize(Decimal("0.01"))
            await self.call(
                self.sales,
                "POST",
                f"/v1/customers/{lead_id}/revenue",
                json={"amount": str(amount), "currency": self.args.currency, "kind": kind, "occurred_at": iso(at)},
            )
            self.count(kind)
            at += timedelta(days=30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=90, help="days of history (default 90)")
    parser.add_argument("--leads-per-day", type=int, default=20, help="roughly, across campaigns (default 20)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ingest", default="http://127.0.0.1:8001")
    parser.add_argument("--leads", default="http://127.0.0.1:8002")
    parser.add_argument("--sales", default="http://127.0.0.1:8003")
    parser.add_argument("--write-key", default="dev-write-key")
    parser.add_argument("--api-token", default="dev-api-token")
    parser.add_argument("--currency", default="EUR")
    parser.add_argument("--concurrency", type=int, default=16)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(Demo(parse_args()).run())
