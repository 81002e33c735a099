"""Visitors, sessions and page views on a hand-computed March 2025, delivered in three phases
out of order (a page view that merges two sessions, one earlier than all of a visitor's
others, page views after the form of their lead, a duplicate): sessions split by inactivity
and by a change of campaign, one lead's several devices, a device shared by two leads, the
headline conversion rate (visitor → lead)."""

from __future__ import annotations

import pytest
from test_metrics_support import Lead, at, page_view, running_metrics

pytestmark = pytest.mark.integration

MARCH = {"from": "2025-03-01", "to": "2025-04-01"}
C1, C2 = ("c1", "cpc"), ("c2", "email")


def day(hhmmss: str, date: str = "2025-03-10"):
    return at(f"{date}T{hhmmss}")


def phases() -> list[list]:
    # Lead LB: devices b1 and b2, and the shared device s; created 03-10 (in March).
    LB = Lead([(*C1, day("09:06"))], anonymous_ids=["b1"])
    # Lead LC: device c and the shared device s; created in February.
    LC = Lead([(*C2, at("2025-02-20"))], anonymous_ids=["c"])
    # Lead LD: device d, whose page views arrive after the lead event; created 03-15.
    LD = Lead([(*C2, at("2025-03-15T10:00"))], anonymous_ids=["d"])
    a = {
        t: page_view("a", day(t), *utm)
        for t, utm in [
            ("10:00:00", C1),  # session 1: c1/cpc
            ("10:10:00", ()),
            ("10:20:00", C1),  # the same campaign: the same session
            ("10:25:00", C2),  # another campaign: session 2, c2/email
            ("10:40:00", ()),
            ("10:55:00", ()),  # arrives last: bridges the 40 minutes between 10:40 and 11:20
            ("11:20:00", ()),
            ("11:49:59", ()),  # 29:59 after the previous one: the same session
            ("12:19:59", ()),  # 30:00 after: session 3, unattributed
        ]
    }
    e = [page_view("e", day("10:00", "2025-03-20"), *C1), page_view("e", day("10:10", "2025-03-20")),
         page_view("e", day("10:20", "2025-03-20"))]  # fmt: skip
    f = [page_view("f", at("2025-03-31T23:59:59")), page_view("f", at("2025-04-01T00:10"))]
    duplicate = a["10:40:00"]
    return [
        [a["10:00:00"], a["10:40:00"], a["12:19:59"], e[1], e[2], LC.created(), LB.created(), f[1]],
        [
            a["10:25:00"], a["11:49:59"], a["10:10:00"],
            page_view("b1", day("09:00"), *C1), page_view("b1", day("09:05")),
            page_view("s", at("2025-03-11T08:00")), page_view("c", at("2025-03-12T08:00"), *C2),
            LD.created(),
            LB.touched((None, None, at("2025-03-11T08:01")), anonymous_ids=["b1", "b2", "s"]),
            f[0],  # earlier than f's only stored page view
        ],
        [
            a["10:20:00"], a["11:20:00"], a["10:55:00"], duplicate,
            e[0],  # earlier than every stored page view of e, and the one with the campaign
            page_view("d", at("2025-03-15T09:50"), *C2), page_view("d", at("2025-03-15T09:55")),
            page_view("b2", day("20:00")),
            LC.touched((None, None, at("2025-03-11T08:02")), anonymous_ids=["c", "s"]),
        ],
    ]  # fmt: skip


@pytest.fixture
async def march(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        for phase in phases():
            await metrics.send(phase)
        yield metrics


def visits(body: dict) -> tuple:
    return body["page_views"], body["sessions"], body["visitors"], body["conversion_rate"]


async def test_visitors_sessions_and_page_views_of_a_hand_computed_month(march):
    # Sessions: a ×3 (c1 10:00, c2 10:25-11:49:59, none 12:19:59), b1 (c1), b2, s, c (c2), d (c2),
    # e (c1, landed by its late page view), f (starts 03-31, its second page view is April's).
    # Persons: a, LB (b1, b2, s), LC (s, c), LD (d), e, f; leads created in March: LB, LD.
    body = await march.kpis(**MARCH)
    assert visits(body) == (20, 10, 6, 0.3333)  # page views: a 9, b1 2, b2 1, s 1, c 1, d 2, e 3, f 1
    assert body["conversion_rates"]["visitor_to_lead"] == 0.3333
    assert body["leads_generated"] == 2  # LB, LD
    assert body["conversion_rates"]["click_to_lead"] is None  # no clicks

    # The session's landing campaign decides: a's 11:20 and 11:49:59 are c2's since 10:55 arrived.
    c1 = await march.kpis(**MARCH, campaign_id="c1")
    assert visits(c1) == (8, 3, 3, 0.3333)  # a 3, b1 2, e 3; a, LB, e; LB
    c2 = await march.kpis(**MARCH, campaign_id="c2")
    assert visits(c2) == (8, 3, 3, 0.3333)  # a 5, c 1, d 2; a, LC, LD; LD
    assert visits(await march.kpis(**MARCH, channel="email")) == visits(c2)
    assert visits(await march.kpis(**MARCH, campaign_id="c2", channel="cpc")) == (0, 0, 0, None)


async def test_a_session_belongs_to_the_period_it_starts_in(march):
    april = await march.kpis(**{"from": "2025-04-01", "to": "2025-05-01"})
    assert visits(april) == (1, 0, 0, None)  # f's 00:10 page view, of a session started in March
    edge = await march.kpis(**{"from": "2025-03-10T10:20:00Z", "to": "2025-03-10T10:40:00Z"})
    assert visits(edge) == (2, 1, 1, 0.0)  # a's 10:20 and 10:25 page views; the session of 10:25


async def test_timeseries_count_each_day_and_its_own_leads(march):
    body = await march.kpis("/v1/kpis/timeseries", **{"from": "2025-03-10", "to": "2025-03-16"})
    by_day = [visits(b) for b in body["buckets"]]
    assert by_day == [
        (12, 5, 2, 0.5),  # 03-10: a 9 + b1 2 + b2 1; a, LB (b1 and b2 once); LB created that day
        (1, 1, 2, 0.0),  # 03-11: s, shared: LB and LC, neither created that day
        (1, 1, 1, 0.0),  # 03-12: c → LC
        (0, 0, 0, None),
        (0, 0, 0, None),
        (2, 1, 1, 1.0),  # 03-15: d → LD, created that day
    ]


async def test_breakdown_groups_by_the_sessions_campaign_and_channel(march):
    body = await march.kpis("/v1/kpis/breakdown", by="campaign", **MARCH)
    rows = {row["campaign_id"]: row for row in body["rows"]}
    assert visits(rows["c1"]) == (8, 3, 3, 0.3333)
    assert visits(rows["c2"]) == (8, 3, 3, 0.3333)
    # Unattributed sessions: a 12:19:59, b2, s, f; persons a, LB, LC, f; LB was created in March.
    assert visits(rows[None]) == (4, 4, 4, 0.25)
    # Lead KPIs keep their attribution grouping: LB is c1's, LD c2's.
    assert (rows["c1"]["leads_generated"], rows["c2"]["leads_generated"]) == (1, 1)
    assert sum(row["page_views"] for row in body["rows"]) == 20

    channels = {row["channel"]: row for row in (await march.kpis("/v1/kpis/breakdown", by="channel", **MARCH))["rows"]}
    assert {name: visits(row) for name, row in channels.items()} == {
        "cpc": (8, 3, 3, 0.3333), "email": (8, 3, 3, 0.3333), None: (4, 4, 4, 0.25),
    }  # fmt: skip
