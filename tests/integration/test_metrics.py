"""The metrics service against the real broker and database: every KPI on a hand-computed
March 2025, delivered out of order and with duplicates; filters, attribution, period edges,
denominators of 0; timeseries, breakdown, feedback; ETag/304; auth; invalid parameters."""

from __future__ import annotations

import uuid

import pytest
from test_metrics_support import AUTH, Lead, at, campaign, running_metrics

pytestmark = pytest.mark.integration

MARCH = {"from": "2025-03-01", "to": "2025-04-01"}


def march_events() -> tuple[list, list, dict]:
    """Two delivery phases: deal events, revenue and a late touch first, the lead's creation
    and the rest after. Same-key duplicates sit before a distinct same-key event, so when
    that one has been applied the duplicate has been seen too."""
    c1, c2 = ("c1", "cpc"), ("c2", "email")
    L1 = Lead([(*c2, at("2025-03-09")), (*c1, at("2025-03-01"))])  # the c1 touch arrives late
    L2 = Lead([(*c1, at("2025-03-02T12:00"))])
    L3 = Lead([(*c2, at("2025-03-03"))])
    L4 = Lead([(None, None, at("2025-03-04"))])
    L5 = Lead([(*c1, at("2025-02-20"))])
    L6 = Lead([(*c1, at("2025-03-31T23:59:59"))])
    L7 = Lead([(*c1, at("2025-04-01"))])
    L8 = Lead([(*c1, at("2025-03-06"))])
    L9 = Lead([(*c1, at("2025-03-08"))])
    L10 = Lead([("partner", "referral", at("2025-03-07"))])
    D1, D3, D5, D8, D9, D10 = (uuid.uuid4() for _ in range(6))

    d1_won = L1.won(D1, at("2025-03-11T12:00"), "1000.00")
    l1_revenue = L1.revenue(at("2025-03-20"), "200.00")
    c1_spend = campaign("c1", "cpc", "spend", at("2025-03-03"), cost="300.00")
    first = [
        # L1's late, older touch (created_at moves back to 03-01, first touch c1) before its creation.
        L1.touched(L1.touches[1]),
        L1.deal_created(D1, at("2025-03-10")), d1_won, d1_won, l1_revenue, l1_revenue,
        L1.revenue(at("2025-03-21"), "0.01"),  # after the duplicate revenue: proves it was seen
        L3.deal_created(D3, at("2025-03-12")),
        L3.lost(D3, at("2025-03-15"), "price", ["too expensive", "no budget"]),
        L5.deal_created(D5, at("2025-02-25")), L5.won(D5, at("2025-03-05"), "500.00"),
        L8.deal_created(D8, at("2025-03-20")), L8.deal_moved(D8, at("2025-03-25")),
        L8.won(D8, at("2025-04-02"), "999.00"),
        L9.deal_created(D9, at("2025-03-20")), L9.lost(D9, at("2025-03-25"), "timing", ["no budget"]),
        L10.deal_created(D10, at("2025-03-07")), L10.won(D10, at("2025-03-08"), "100.00"),
        c1_spend, c1_spend,
        campaign("c1", "cpc", "impression", at("2025-03-02"), count=1000),
    ]  # fmt: skip
    second = [
        L1.created(touches=[L1.touches[0]]),  # what leads published first: created 03-09 from c2
        L1.stage("mql", at("2025-03-09T01:00")), L1.stage("sql", at("2025-03-09T02:00"), frm="mql"),
        d1_won,  # redelivered much later
        L1.revenue(at("2025-04-05"), "49.99"),
        L2.created(), L2.stage("mql", at("2025-03-03")),
        L3.created(), L3.stage("sql", at("2025-03-04")),
        L4.created(), L4.stage("disqualified", at("2025-03-05")),
        L5.created(), L5.stage("mql", at("2025-02-21")), L5.stage("sql", at("2025-02-22"), frm="mql"),
        L6.created(), L7.created(),
        L8.created(), L8.stage("sql", at("2025-03-19")),
        L9.created(), L9.stage("sql", at("2025-03-19")),
        L10.created(), L10.stage("sql", at("2025-03-07")),
        c1_spend,
        campaign("c1", "cpc", "click", at("2025-03-02"), count=40),
        campaign("c2", "email", "click", at("2025-03-05"), count=10),
        campaign("c2", "email", "spend", at("2025-03-05"), cost="100.00"),
        campaign("c1", "cpc", "click", at("2025-04-01"), count=5),  # `to` is exclusive
        campaign("c1", "cpc", "click", at("2025-03-01"), count=7),  # `from` is inclusive
        campaign("c1", "cpc", "spend", at("2025-02-28T23:59:59"), cost="50.00"),
    ]  # fmt: skip
    return first, second, {"L1": L1, "L3": L3, "L9": L9}


@pytest.fixture
async def march(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        first, second, leads = march_events()
        await metrics.send(first)
        await metrics.send(second)
        metrics.leads = leads
        yield metrics


async def test_every_kpi_on_a_hand_computed_month(march):
    # Leads created in March (first touch): L1 L2 L3 L4 L6 L8 L9 L10. L5 (Feb) and L7 (Apr 1) are not.
    body = await march.kpis(**MARCH)
    assert body == {
        "from": "2025-03-01T00:00:00Z",
        "to": "2025-04-01T00:00:00Z",
        "currency": "EUR",
        "filters": {"campaign_id": None, "channel": None},
        "attribution": "first_touch",
        "cac": "133.33",  # 400 / 3 new customers (L1, L5, L10)
        "conversion_rate": None,  # visitor → lead: no page views, no visitors (test_metrics_visitors.py)
        "cac_full": "133.33",  # every cost (ad spend only here: no PUT /v1/costs) / 3 new customers
        "roi": 3.5,  # (1800 - 400) / 400
        "roas": 4.5,  # 1800.01 / 400
        "leads_generated": 8,
        "close_rate": 0.375,  # 3 customers (L1, L8, L10) / 8
        "sales_cycle_days": {"average": 8.1667, "median": 10.5},  # D1 10.5, D5 13, D10 1
        "ltv": "616.67",  # (L1 1000+200+0.01+49.99, L5 500, L10 100) / 3
        "revenue": "1800.01",  # won 1000 + 500 + 100, recorded 200 + 0.01 (Apr 5 is outside)
        "page_views": 0,
        "sessions": 0,
        "visitors": 0,
        "impressions": 1000,
        "clicks": 57,  # 40 + 10 + 7 (Apr 1 is outside)
        "spend": "400.00",  # 300 + 100 (Feb 28 is outside)
        "costs": {"media": "400.00", "marketing": "400.00", "sales": "0.00", "total": "400.00"},  # ad spend is media
        "funnel": {"leads": 8, "mql": 6, "sql": 5, "opportunity": 5, "customer": 3},
        "conversion_rates": {
            "visitor_to_lead": None,
            "click_to_lead": 0.1404,  # 8 leads / 57 clicks
            "lead_to_mql": 0.75,
            "mql_to_sql": 0.8333,
            "sql_to_opportunity": 1.0,
            "opportunity_to_customer": 0.6,
            "lead_to_customer": 0.375,
        },
        "deals_won": 3,  # D1, D5, D10 (D8 is won in April)
        "deals_lost": 2,  # D3, D9
        "win_rate": 0.6,
        "new_customers": 3,
        "ltv_to_cac": 4.625,  # 1850 / 400
        # First arrivals in March. mql: L1 L2 L3 (at sql) L8 L9 L10 (L5: Feb 21); sql: L1 L3 L8
        # L9 L10; opportunity (first deal): L1 L3 L8 L9 L10 (L5's D5: Feb 25); customer = new ones.
        "stage_reached": {"mql": 6, "sql": 5, "opportunity": 5, "customer": 3},
        "pipeline_created": "0.00",  # these deals carry no expected amount
        "sla": {
            "handoffs": 0,
            "accepted": 0,
            "rejected": 0,
            "responded_within_sla": 0,
            "breached": 0,
            "pending": 0,
            "pending_overdue": 0,
            "within_sla_rate": None,
            "median_hours_to_response": None,
        },  # fmt: skip
        "pipeline": {"open_deals": 1, "open_value": "0.00", "weighted_value": "0.00"},  # D8, won Apr 2
        "forecast": "1800.01",  # the month is over: its revenue
        "as_of": "2025-04-05T00:00:00Z",
    }


async def test_campaign_filter_and_the_attribution_switch(march):
    first = await march.kpis(**MARCH, campaign_id="c1")
    # First touch: L1 is c1's (its late touch). Campaign events: c1's own.
    assert (first["impressions"], first["clicks"], first["spend"]) == (1000, 47, "300.00")
    assert first["funnel"] == {"leads": 5, "mql": 4, "sql": 3, "opportunity": 3, "customer": 2}
    assert (first["deals_won"], first["deals_lost"], first["win_rate"]) == (2, 1, 0.6667)
    assert (first["new_customers"], first["revenue"], first["cac"]) == (2, "1700.01", "150.00")
    assert (first["ltv"], first["ltv_to_cac"], first["roi"]) == ("875.00", 5.8333, 4.6667)
    assert first["sales_cycle_days"] == {"average": 11.75, "median": 11.75}
    assert first["conversion_rates"]["click_to_lead"] == 0.1064  # 5 / 47

    last = await march.kpis(**MARCH, campaign_id="c1", attribution="last_touch")
    # Last touch: L1 moves to c2 (its last touch), so c1 loses L1 and D1.
    assert last["attribution"] == "last_touch"
    assert (last["impressions"], last["clicks"], last["spend"]) == (1000, 47, "300.00")
    assert last["funnel"] == {"leads": 4, "mql": 3, "sql": 2, "opportunity": 2, "customer": 1}
    assert (last["deals_won"], last["deals_lost"], last["win_rate"]) == (1, 1, 0.5)
    assert (last["new_customers"], last["revenue"], last["cac"], last["ltv"]) == (1, "500.00", "300.00", "500.00")
    assert (last["roi"], last["ltv_to_cac"]) == (0.6667, 1.6667)
    assert last["sales_cycle_days"] == {"average": 13.0, "median": 13.0}

    c2_last = await march.kpis(**MARCH, campaign_id="c2", attribution="last_touch")
    assert c2_last["leads_generated"] == 2 and c2_last["new_customers"] == 1  # L1, L3; L1 won
    assert (c2_last["revenue"], c2_last["ltv"], c2_last["cac"]) == ("1200.01", "1250.00", "100.00")


async def test_denominators_of_zero_give_null(march):
    empty = await march.kpis(**{"from": "2024-01-01", "to": "2024-02-01"})
    assert empty["leads_generated"] == 0 and empty["clicks"] == 0
    for name in ("cac", "conversion_rate", "roi", "close_rate", "ltv", "win_rate", "ltv_to_cac"):
        assert empty[name] is None, name
    assert all(value is None for value in empty["conversion_rates"].values())
    assert empty["sales_cycle_days"] == {"average": None, "median": None}
    assert (empty["revenue"], empty["spend"]) == ("0.00", "0.00")
    assert empty["funnel"] == {"leads": 0, "mql": 0, "sql": 0, "opportunity": 0, "customer": 0}

    # Spend but no new customer: no CAC, no LTV; ROI is -1; one lost deal → win rate 0.
    email = await march.kpis(**MARCH, channel="email")
    assert (email["spend"], email["clicks"], email["leads_generated"]) == ("100.00", 10, 1)
    assert (email["cac"], email["ltv"], email["ltv_to_cac"], email["roi"]) == (None, None, None, -1.0)
    assert (email["win_rate"], email["conversion_rates"]["opportunity_to_customer"]) == (0.0, 0.0)

    # A new customer but no spend and no clicks: CAC 0.00, no ROI, no LTV/CAC, no click rate.
    partner = await march.kpis(**MARCH, campaign_id="partner")
    assert (partner["cac"], partner["ltv"], partner["roi"], partner["ltv_to_cac"]) == ("0.00", "100.00", None, None)
    assert partner["conversion_rates"]["click_to_lead"] is None and partner["leads_generated"] == 1


async def test_period_edges_from_inclusive_to_exclusive(march):
    last_second = await march.kpis(**{"from": "2025-03-31T23:59:59Z", "to": "2025-04-01T00:00:00Z"})
    assert (last_second["leads_generated"], last_second["clicks"]) == (1, 0)  # L6
    # The same instant written with an offset.
    april_first = await march.kpis(**{"from": "2025-04-01T02:00:00+02:00", "to": "2025-04-02"})
    assert april_first["from"] == "2025-04-01T00:00:00Z"
    assert (april_first["leads_generated"], april_first["clicks"]) == (1, 5)  # L7, the Apr 1 clicks
    feb_last = await march.kpis(**{"from": "2025-02-28T23:59:59Z", "to": "2025-03-01T00:00:00Z"})
    assert (feb_last["spend"], feb_last["clicks"]) == ("50.00", 0)
    first_instant = await march.kpis(**{"from": "2025-03-01T00:00:00Z", "to": "2025-03-01T00:00:01Z"})
    assert (first_instant["leads_generated"], first_instant["clicks"]) == (1, 7)  # L1 (moved back), 7 clicks


async def test_timeseries_buckets_add_up(march):
    body = await march.kpis("/v1/kpis/timeseries", **MARCH, interval="week")
    buckets = body["buckets"]
    # ISO weeks start on Monday: March 1, 2025 is a Saturday, so the first bucket is partial.
    assert [(b["from"][:10], b["to"][:10]) for b in buckets] == [
        ("2025-03-01", "2025-03-03"), ("2025-03-03", "2025-03-10"), ("2025-03-10", "2025-03-17"),
        ("2025-03-17", "2025-03-24"), ("2025-03-24", "2025-03-31"), ("2025-03-31", "2025-04-01"),
    ]  # fmt: skip
    assert [b["leads_generated"] for b in buckets] == [2, 5, 0, 0, 0, 1]  # L1 L2 | L3 L4 L8 L9 L10 | L6
    assert [b["deals_won"] for b in buckets] == [0, 2, 1, 0, 0, 0]  # D5 D10 | D1
    assert [b["revenue"] for b in buckets] == ["0.00", "600.00", "1000.00", "200.01", "0.00", "0.00"]
    assert sum(b["clicks"] for b in buckets) == 57
    assert buckets[2]["conversion_rates"]["click_to_lead"] is None  # no clicks that week
    assert body["interval"] == "week" and body["as_of"] == "2025-04-05T00:00:00Z"

    daily = await march.kpis("/v1/kpis/timeseries", **MARCH)
    assert len(daily["buckets"]) == 31 and daily["interval"] == "day"
    monthly = await march.kpis("/v1/kpis/timeseries", **{"from": "2025-02-01", "to": "2025-05-01"}, interval="month")
    assert [b["leads_generated"] for b in monthly["buckets"]] == [1, 8, 1]


async def test_a_madrid_march_is_local_march(march):
    # Madrid is +01:00 until March 30, 2025, +02:00 after: its March is Feb 28 23:00Z → Mar 31 22:00Z.
    body = await march.kpis(**MARCH, tz="Europe/Madrid")
    assert (body["from"], body["to"]) == ("2025-03-01T00:00:00+01:00", "2025-04-01T00:00:00+02:00")
    assert body["leads_generated"] == 7  # L6 (Mar 31 23:59:59Z) is created on April 1 in Madrid
    assert body["spend"] == "450.00"  # the 50.00 of Feb 28 23:59:59Z is spent on March 1 there
    assert body["clicks"] == 57  # the 5 of Apr 1 00:00Z fall on Apr 1 in Madrid too

    weeks = (await march.kpis("/v1/kpis/timeseries", **MARCH, tz="Europe/Madrid", interval="week"))["buckets"]
    assert [(b["from"], b["to"]) for b in weeks][-2:] == [
        ("2025-03-24T00:00:00+01:00", "2025-03-31T00:00:00+02:00"),  # 167 hours: the DST change is in it
        ("2025-03-31T00:00:00+02:00", "2025-04-01T00:00:00+02:00"),
    ]
    assert sum(b["leads_generated"] for b in weeks) == 7 and weeks[0]["spend"] == "50.00"  # Sat Mar 1 – Sun Mar 2

    default_zone = await march.kpis(**MARCH)
    assert default_zone["from"] == "2025-03-01T00:00:00Z" and default_zone["leads_generated"] == 8


async def test_breakdown_by_campaign_and_channel(march):
    body = await march.kpis("/v1/kpis/breakdown", by="campaign", **MARCH)
    rows = {row["campaign_id"]: row for row in body["rows"]}
    assert [row["campaign_id"] for row in body["rows"]] == ["c1", "c2", "partner", None]
    assert (rows["c1"]["leads_generated"], rows["c1"]["spend"], rows["c1"]["new_customers"]) == (5, "300.00", 2)
    assert (rows["c2"]["leads_generated"], rows["c2"]["clicks"], rows["c2"]["deals_lost"]) == (1, 10, 1)
    assert rows[None]["leads_generated"] == 1 and rows[None]["spend"] == "0.00"  # L4, unattributed
    assert sum(r["leads_generated"] for r in body["rows"]) == 8

    by_channel = await march.kpis("/v1/kpis/breakdown", by="channel", attribution="last_touch", **MARCH)
    channels = {row["channel"]: row for row in by_channel["rows"]}
    assert set(channels) == {"cpc", "email", "referral", None}
    assert channels["email"]["leads_generated"] == 2  # L1 by its last touch, L3
    assert channels["email"]["revenue"] == "1200.01"


async def test_feedback_reports_lost_reasons_and_objections_by_campaign(march):
    body = await march.kpis("/v1/feedback", **MARCH)
    assert body["deals_lost"] == 2
    assert body["lost_reasons"] == [{"reason": "price", "count": 1}, {"reason": "timing", "count": 1}]
    assert body["objections"] == [{"objection": "no budget", "count": 2}, {"objection": "too expensive", "count": 1}]
    nothing_else = {
        "deals_rejected": 0,
        "rejection_reasons": [],
        "disqualifications": 0,
        "disqualification_reasons": [],
    }
    assert body["campaigns"] == [
        {"campaign_id": "c1", "deals_lost": 1, "lost_reasons": [{"reason": "timing", "count": 1}],
         "objections": [{"objection": "no budget", "count": 1}], **nothing_else},
        {"campaign_id": "c2", "deals_lost": 1, "lost_reasons": [{"reason": "price", "count": 1}],
         "objections": [{"objection": "no budget", "count": 1}, {"objection": "too expensive", "count": 1}],
         **nothing_else},
    ]  # fmt: skip
    # Events from before the objection vocabulary: their texts count under `other`.
    assert body["objections_by_outcome"] == {
        "lost": [{"key": "other", "count": 2, "texts": [{"text": "no budget", "count": 2},
                                                        {"text": "too expensive", "count": 1}]}],
        "won": [], "open": [],
    }  # fmt: skip
    only_c2 = await march.kpis("/v1/feedback", **MARCH, campaign_id="c2")
    assert only_c2["deals_lost"] == 1 and only_c2["lost_reasons"] == [{"reason": "price", "count": 1}]
    april = await march.kpis("/v1/feedback", **{"from": "2025-04-01", "to": "2025-05-01"})
    assert april["deals_lost"] == 0 and april["campaigns"] == []


async def test_etag_gives_304_until_an_event_changes_the_state(march):
    paths = {"/v1/kpis": {}, "/v1/kpis/timeseries": {}, "/v1/kpis/breakdown": {"by": "campaign"}, "/v1/feedback": {}}
    tags = {}
    for path, extra in paths.items():
        first = await march.client.get(path, params={**MARCH, **extra}, headers=AUTH)
        assert first.status_code == 200 and first.headers["etag"]
        tags[path] = first.headers["etag"]
        again = await march.client.get(path, params={**MARCH, **extra},
                                       headers={**AUTH, "If-None-Match": tags[path]})  # fmt: skip
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == tags[path]
    assert len(set(tags.values())) == len(paths)  # the question is part of the tag
    other = await march.client.get("/v1/kpis", params={**MARCH, "attribution": "last_touch"},
                                   headers={**AUTH, "If-None-Match": tags["/v1/kpis"]})  # fmt: skip
    assert other.status_code == 200

    L3 = march.leads["L3"]
    await march.send([L3.revenue(at("2025-03-30"), "10.00")])
    changed = await march.client.get("/v1/kpis", params=MARCH, headers={**AUTH, "If-None-Match": tags["/v1/kpis"]})
    assert changed.status_code == 200 and changed.headers["etag"] != tags["/v1/kpis"]
    assert changed.json()["revenue"] == "1810.01"


async def test_the_api_needs_a_token_and_the_page_does_not(march):
    for path in ["/v1/kpis", "/v1/kpis/timeseries", "/v1/kpis/breakdown?by=channel", "/v1/feedback"]:
        response = await march.client.get(path)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        wrong = await march.client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    page = await march.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "dev-api-token" not in page.text  # only EMBUDO_ENV=dev pre-fills it
    chart = await march.client.get("/static/vendor/chart.umd.min.js")
    assert chart.status_code == 200 and b"Chart.js v4" in chart.content[:200]


INVALID = [
    ("/v1/kpis", {"to": ""}, "to"),  # given but empty is not the default
    ("/v1/kpis", {"from": "2025-03-01T00:00:00"}, "from"),  # naive datetime
    ("/v1/kpis", {"to": "yesterday"}, "to"),
    ("/v1/kpis", {"from": "2025-02-30"}, "from"),
    ("/v1/kpis", {"to": "0001-01-02"}, "to"),  # from would fall before year 1
    ("/v1/kpis", {"attribution": "linear"}, "attribution"),
    ("/v1/kpis/timeseries", {"interval": "hour"}, "interval"),
    ("/v1/kpis/timeseries", {"from": "2020-01-01", "to": "2025-01-01", "interval": "day"}, "interval"),
    ("/v1/kpis/breakdown", {}, "by"),
    ("/v1/kpis/breakdown", {"by": "source"}, "by"),
    ("/v1/feedback", {"from": "2025-03-01T00:00:00+25:00"}, "from"),
    ("/v1/kpis", {"tz": "Europe/Atlantis"}, "tz"),
    ("/v1/kpis/timeseries", {"tz": "localtime"}, "tz"),  # the machine's zone is no place's name
]


async def test_invalid_parameters_are_422_problems(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        for path, params, field in INVALID:
            response = await metrics.client.get(path, params=params, headers=AUTH)
            assert response.status_code == 422, (path, params, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert field in [error["field"] for error in response.json()["errors"]], (path, params)


async def test_a_period_that_ends_before_it_starts_is_empty(march):
    reversed_period = {"from": "2025-03-02", "to": "2025-03-01"}
    kpis = (await march.client.get("/v1/kpis", params=reversed_period, headers=AUTH)).json()
    assert kpis["leads_generated"] == 0 and kpis["from"] == kpis["to"] == "2025-03-02T00:00:00Z"
    series = (await march.client.get("/v1/kpis/timeseries", params=reversed_period, headers=AUTH)).json()
    assert series["buckets"] == []


async def test_a_nul_character_in_a_filter_is_a_422_not_a_500(make_settings, topic_prefix):
    # Postgres text cannot hold U+0000: unchecked, the filter failed in the database.
    async with running_metrics(make_settings, topic_prefix) as metrics:
        for path in ["/v1/kpis", "/v1/kpis/timeseries", "/v1/kpis/breakdown?by=campaign", "/v1/feedback"]:
            for field in ("campaign_id", "channel"):
                response = await metrics.client.get(path, params={field: "c1\x00"}, headers=AUTH)
                assert response.status_code == 422, (path, field, response.text)
                assert field in [error["field"] for error in response.json()["errors"]], (path, field)


async def test_dev_environment_prefills_the_dev_token(make_settings, topic_prefix):
    # `make dev` sets no tokens, so the dev token is the one accepted and the page fills it in.
    async with running_metrics(make_settings, topic_prefix, env="dev", api_tokens="") as metrics:
        page = await metrics.client.get("/")
    assert page.status_code == 200 and '"token": "dev-api-token"' in page.text


async def test_dev_environment_with_its_own_tokens_does_not_prefill_a_refused_one(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix, env="dev", api_tokens="team-token") as metrics:
        page = await metrics.client.get("/")
        refused = await metrics.client.get("/v1/kpis", headers={"Authorization": "Bearer dev-api-token"})
    assert page.status_code == 200 and "dev-api-token" not in page.text
    assert refused.status_code == 401
