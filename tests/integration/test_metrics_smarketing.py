"""Smarketing numbers on a hand-computed April 2025 (the clock fixed at April 20, 12:00 UTC,
SLA 24 h): first arrivals at each stage, the handoff SLA (met, breached late, pending, pending
overdue), a rejection that sends a lead back to mql and a second handoff, the pipeline open
now and at a past period's end (valued as it was then), the forecast, the pipeline created.
Events arrive in reverse order, some twice."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from test_metrics_support import AUTH, Lead, at, running_metrics

pytestmark = pytest.mark.integration

APRIL = {"from": "2025-04-01", "to": "2025-05-01"}
MARCH = {"from": "2025-03-01", "to": "2025-04-01"}
NOW = at("2025-04-20T12:00")


def april_events() -> list:
    c1 = ("c1", "cpc")
    A = Lead([(*c1, at("2025-04-01T10:00"))])
    B = Lead([(*c1, at("2025-04-02"))])
    C = Lead([("c2", "email", at("2025-04-03"))])
    D = Lead([(*c1, at("2025-04-05"))])
    E = Lead([(*c1, at("2025-04-06"))])
    F = Lead([(*c1, at("2025-04-08"))])
    G = Lead([(*c1, at("2025-03-10"))])
    HA, HB, HC1, HC2, HD, DF, DG = (uuid.uuid4() for _ in range(7))
    return [
        # A: handed off at sql, accepted 6 h later (met); then given an amount and moved on.
        A.created(), A.stage("mql", at("2025-04-01T12:00")), A.stage("sql", at("2025-04-02T09:00"), frm="mql"),
        A.deal_created(HA, at("2025-04-02T09:00"), handoff=True, probability=0.2),
        A.accepted(HA, at("2025-04-02T15:00")),
        A.details_changed(HA, at("2025-04-03"), "1000.00", date(2025, 4, 25)),
        A.deal_moved(HA, at("2025-04-05"), "proposal", probability=0.5),
        # B: accepted after 48 h (breached late), then won.
        B.created(), B.stage("sql", at("2025-04-03T10:00")),
        B.deal_created(HB, at("2025-04-03T10:00"), handoff=True, probability=0.2),
        B.accepted(HB, at("2025-04-05T10:00")),
        B.details_changed(HB, at("2025-04-04"), "800.00", date(2025, 4, 15)),
        B.won(HB, at("2025-04-10"), "800.00"),
        # C: rejected within 12 h, back to mql, a second handoff nobody answers (overdue).
        C.created(), C.stage("sql", at("2025-04-04T08:00")),
        C.deal_created(HC1, at("2025-04-04T08:00"), handoff=True, probability=0.2),
        C.rejected(HC1, at("2025-04-04T20:00"), "not a fit"),
        C.stage("mql", at("2025-04-04T20:00"), frm="sql"),
        C.stage("sql", at("2025-04-10T08:00"), frm="mql"),
        C.deal_created(HC2, at("2025-04-10T08:00"), handoff=True, probability=0.2),
        # D: handed off 16 h before now: pending, not yet overdue.
        D.created(), D.stage("sql", at("2025-04-19T20:00")),
        D.deal_created(HD, at("2025-04-19T20:00"), handoff=True, probability=0.2),
        # E: disqualified.
        E.created(), E.stage("disqualified", at("2025-04-07"), reason="student"),
        # F: a deal opened by hand (no handoff), expected in May.
        F.created(), F.deal_created(DF, at("2025-04-08"), amount="500.00", probability=0.2, close=date(2025, 5, 10)),
        # G: a March deal, open at the end of March at 300 (350 only from April 1, 06:00), won Apr 2.
        G.created(),
        G.deal_created(DG, at("2025-03-15"), amount="300.00", probability=0.5, close=date(2025, 3, 31)),
        G.details_changed(DG, at("2025-04-01T06:00"), "350.00", date(2025, 4, 2)),
        G.won(DG, at("2025-04-02"), "350.00"),
    ]  # fmt: skip


@pytest.fixture
async def april(make_settings, topic_prefix):
    async with running_metrics(make_settings, topic_prefix) as metrics:
        events = april_events()
        # Reverse order (deal events before their leads, answers before handoffs), some twice.
        await metrics.send(list(reversed(events)) + events[::3])
        metrics.clock_at(NOW)
        metrics.events = events
        yield metrics


async def test_stage_reached_sla_pipeline_and_forecast_of_a_running_month(april):
    body = await april.kpis(**APRIL)
    assert body["leads_generated"] == 6  # A B C D E F
    # mql/sql: A B C D, and F by its deal (E was disqualified); opportunity: A B D F, and C by
    # its second handoff (the first was rejected); customers: B and G (first wins in April).
    assert body["stage_reached"] == {"mql": 5, "sql": 5, "opportunity": 5, "customer": 2}
    assert body["funnel"] == {"leads": 6, "mql": 5, "sql": 5, "opportunity": 5, "customer": 1}
    assert body["sla"] == {
        "handoffs": 5,  # HA HB HC1 HC2 HD
        "accepted": 2,  # HA HB
        "rejected": 1,  # HC1
        "responded_within_sla": 2,  # HA (6 h), HC1 (12 h)
        "breached": 2,  # HB (48 h), HC2 (pending 10 days)
        "pending": 2,  # HC2 HD
        "pending_overdue": 1,  # HC2 (HD: 16 h)
        "within_sla_rate": 0.4,
        "median_hours_to_response": 12.0,  # 6, 12, 48
    }
    # Open now: HA 1000 × 0.5, DF 500 × 0.2, HC2 and HD without an amount.
    assert body["pipeline"] == {"open_deals": 4, "open_value": "1500.00", "weighted_value": "600.00"}
    assert (body["deals_won"], body["deals_lost"], body["revenue"]) == (2, 0, "1150.00")  # HB 800, DG 350
    # Revenue so far + HA (expected Apr 25, in the rest of April); DF is expected in May.
    assert body["forecast"] == "1650.00"
    # Created in April and not rejected: HA 1000, HB 800, DF 500 (HC2, HD have no amount).
    assert body["pipeline_created"] == "2300.00"

    c2 = await april.kpis(**APRIL, campaign_id="c2")  # C alone
    assert c2["sla"]["handoffs"] == 2 and c2["sla"]["rejected"] == 1 and c2["sla"]["pending_overdue"] == 1
    assert c2["pipeline"]["open_deals"] == 1 and c2["stage_reached"]["opportunity"] == 1


async def test_the_pipeline_at_a_past_periods_end_is_valued_as_it_was_then(april):
    march = await april.kpis(**MARCH)
    # Open at April 1, 00:00: DG, at its March amount and probability.
    assert march["pipeline"] == {"open_deals": 1, "open_value": "300.00", "weighted_value": "150.00"}
    assert march["forecast"] == "0.00"  # March is over: its revenue (none)
    assert march["stage_reached"] == {"mql": 1, "sql": 1, "opportunity": 1, "customer": 0}  # G, by its deal
    assert march["pipeline_created"] == "350.00"  # DG, as known now

    # Month buckets: each one's pipeline at its own end, the last one's now.
    series = await april.kpis("/v1/kpis/timeseries", **{"from": "2025-03-01", "to": "2025-05-01"}, interval="month")
    assert [b["pipeline"]["open_deals"] for b in series["buckets"]] == [1, 4]
    assert [b["forecast"] for b in series["buckets"]] == ["0.00", "1650.00"]
    assert [b["sla"]["handoffs"] for b in series["buckets"]] == [0, 5]

    # A period that has not started: the pipeline open now; its forecast, what is expected in it.
    may = await april.kpis(**{"from": "2025-05-01", "to": "2025-06-01"})
    assert may["pipeline"]["open_deals"] == 4 and may["forecast"] == "100.00"  # DF 500 × 0.2


async def test_by_campaign_every_new_number_adds_up(april):
    body = await april.kpis("/v1/kpis/breakdown", by="campaign", **APRIL)
    rows = {row["campaign_id"]: row for row in body["rows"]}
    assert set(rows) == {"c1", "c2"}
    for name in ("handoffs", "accepted", "rejected", "breached", "pending", "pending_overdue"):
        assert rows["c1"]["sla"][name] + rows["c2"]["sla"][name] == (await april.kpis(**APRIL))["sla"][name]
    assert rows["c1"]["pipeline"] == {"open_deals": 3, "open_value": "1500.00", "weighted_value": "600.00"}
    assert rows["c2"]["forecast"] == "0.00" and rows["c1"]["forecast"] == "1650.00"


async def test_a_rejection_then_a_second_handoff(make_settings, topic_prefix):
    lead = Lead([("c1", "cpc", at("2025-04-01"))])
    first, second = uuid.uuid4(), uuid.uuid4()
    async with running_metrics(make_settings, topic_prefix) as metrics:
        metrics.clock_at(NOW)
        await metrics.send([
            lead.created(), lead.stage("sql", at("2025-04-02")),
            lead.deal_created(first, at("2025-04-02"), handoff=True, probability=0.2),
        ])  # fmt: skip
        handed_off = await metrics.kpis(**APRIL)
        assert handed_off["funnel"]["opportunity"] == 1 and handed_off["sla"]["pending_overdue"] == 1

        await metrics.send([lead.rejected(first, at("2025-04-03"), "no budget"),
                            lead.stage("mql", at("2025-04-03"), frm="sql")])  # fmt: skip
        rejected = await metrics.kpis(**APRIL)
        # It still reached mql and sql, but is no longer an opportunity; rejected at exactly 24 h: in time.
        assert rejected["funnel"] == {"leads": 1, "mql": 1, "sql": 1, "opportunity": 0, "customer": 0}
        assert rejected["stage_reached"] == {"mql": 1, "sql": 1, "opportunity": 0, "customer": 0}
        assert rejected["sla"]["rejected"] == 1 and rejected["sla"]["responded_within_sla"] == 1
        assert rejected["pipeline"]["open_deals"] == 0 and rejected["deals_lost"] == 0
        assert rejected["win_rate"] is None

        await metrics.send([lead.stage("sql", at("2025-04-08"), frm="mql"),
                            lead.deal_created(second, at("2025-04-08"), handoff=True, probability=0.2),
                            lead.accepted(second, at("2025-04-08T05:00"))])  # fmt: skip
        again = await metrics.kpis(**APRIL)
        assert again["funnel"]["opportunity"] == 1
        assert again["stage_reached"] == {"mql": 1, "sql": 1, "opportunity": 1, "customer": 0}
        opportunity_week = await metrics.kpis(**{"from": "2025-04-08", "to": "2025-04-09"})
        assert opportunity_week["stage_reached"]["opportunity"] == 1  # its first arrival: the second handoff
        assert again["sla"] == {
            "handoffs": 2, "accepted": 1, "rejected": 1, "responded_within_sla": 2, "breached": 0, "pending": 0,
            "pending_overdue": 0, "within_sla_rate": 1.0, "median_hours_to_response": 14.5,  # 24 and 5
        }  # fmt: skip


async def test_a_handoff_becomes_overdue_with_time_alone_and_the_etag_follows(april):
    first = await april.client.get("/v1/kpis", params=APRIL, headers=AUTH)
    assert first.json()["sla"]["pending_overdue"] == 1
    same = await april.client.get("/v1/kpis", params=APRIL, headers={**AUTH, "If-None-Match": first.headers["etag"]})
    assert same.status_code == 304

    april.clock_at(at("2025-04-20T20:01"))  # HD (handed off 04-19 20:00) is now 24 h 1 min old
    later = await april.client.get("/v1/kpis", params=APRIL, headers={**AUTH, "If-None-Match": first.headers["etag"]})
    assert later.status_code == 200 and later.headers["etag"] != first.headers["etag"]
    assert (later.json()["sla"]["pending_overdue"], later.json()["sla"]["breached"]) == (2, 3)

    # A period over for longer than the SLA no longer depends on the clock: 304 as time passes.
    march = await april.client.get("/v1/kpis", params=MARCH, headers=AUTH)
    april.clock_at(at("2025-04-25"))
    still = await april.client.get("/v1/kpis", params=MARCH, headers={**AUTH, "If-None-Match": march.headers["etag"]})
    assert still.status_code == 304


async def test_feedback_rejection_and_disqualification_reasons_and_objections_by_outcome(april):
    P, Q, T = (Lead([("c1", "cpc", at("2025-04-02"))]) for _ in range(3))
    R, S = (Lead([("c2", "email", at("2025-04-02"))]) for _ in range(2))
    U, V = Lead([("c1", "cpc", at("2025-04-02"))]), Lead([("c2", "email", at("2025-03-02"))])
    P1, Q1, R1, S1, T1, V1 = (uuid.uuid4() for _ in range(6))
    await april.send([
        # The same objection in other words (and spellings) counts under its key, once per deal.
        P.deal_created(P1, at("2025-04-03")),
        P.lost(P1, at("2025-04-12"), "price", normalised=[("price", "Too expensive"), ("price", "too pricey"),
                                                           ("timing", "not now")]),
        Q.deal_created(Q1, at("2025-04-03")),
        Q.lost(Q1, at("2025-04-14"), "price", normalised=[("price", "too expensive")]),
        T.deal_created(T1, at("2025-04-03")), T.lost(T1, at("2025-04-18"), "other", ["meh"]),  # before the vocabulary
        # Open and won deals' objections come on their own, possibly more than once.
        R.deal_created(R1, at("2025-04-03")),
        R.objections_recorded(R1, at("2025-04-11"), [("price", "Cost"), ("integration", "no Salesforce connector")]),
        R.objections_recorded(R1, at("2025-04-15"), [("price", "Cost")]),
        S.deal_created(S1, at("2025-04-03")), S.objections_recorded(S1, at("2025-04-12"), [("timing", "next quarter")]),
        S.won(S1, at("2025-04-16"), "100.00"),
        # Lost in March: not April's.
        V.deal_created(V1, at("2025-03-03")), V.lost(V1, at("2025-03-20"), "price", normalised=[("price", "Cost")]),
        U.created(), U.stage("disqualified", at("2025-04-09"), reason="student"),
        R.stage("disqualified", at("2025-04-10"), reason="no budget"),
        S.stage("disqualified", at("2025-04-10"), reason="  "),  # no reason: not counted
        V.stage("disqualified", at("2025-03-10"), reason="student"),  # March
    ])  # fmt: skip
    body = await april.kpis("/v1/feedback", **APRIL)
    assert (body["deals_lost"], body["deals_rejected"], body["disqualifications"]) == (3, 1, 3)
    assert body["rejection_reasons"] == [{"reason": "not a fit", "count": 1}]  # HC1
    assert body["disqualification_reasons"] == [{"reason": "student", "count": 2}, {"reason": "no budget", "count": 1}]
    assert body["objections_by_outcome"] == {
        "lost": [
            {"key": "price", "count": 2, "texts": [{"text": "Too expensive", "count": 1},
                                                   {"text": "too expensive", "count": 1},
                                                   {"text": "too pricey", "count": 1}]},
            {"key": "other", "count": 1, "texts": [{"text": "meh", "count": 1}]},
            {"key": "timing", "count": 1, "texts": [{"text": "not now", "count": 1}]},
        ],
        "won": [{"key": "timing", "count": 1, "texts": [{"text": "next quarter", "count": 1}]}],
        "open": [
            {"key": "integration", "count": 1, "texts": [{"text": "no Salesforce connector", "count": 1}]},
            {"key": "price", "count": 1, "texts": [{"text": "Cost", "count": 1}]},
        ],
    }  # fmt: skip
    campaigns = {c["campaign_id"]: c for c in body["campaigns"]}
    assert [c["campaign_id"] for c in body["campaigns"]] == ["c1", "c2"]  # 3 lost, then 0 lost
    assert campaigns["c1"]["disqualification_reasons"] == [{"reason": "student", "count": 2}]  # E, U
    assert campaigns["c2"] == {
        "campaign_id": "c2", "deals_lost": 0, "lost_reasons": [], "objections": [],
        "deals_rejected": 1, "rejection_reasons": [{"reason": "not a fit", "count": 1}],
        "disqualifications": 1, "disqualification_reasons": [{"reason": "no budget", "count": 1}],
    }  # fmt: skip

    # The open deals are those open at the period's end: at March's end, none of these.
    march = await april.kpis("/v1/feedback", **MARCH)
    assert march["objections_by_outcome"]["open"] == []
    assert march["objections_by_outcome"]["lost"] == [
        {"key": "price", "count": 1, "texts": [{"text": "Cost", "count": 1}]}
    ]
    assert march["disqualification_reasons"] == [{"reason": "student", "count": 1}]
    only_c2 = await april.kpis("/v1/feedback", **APRIL, campaign_id="c2")
    assert [o["key"] for o in only_c2["objections_by_outcome"]["open"]] == ["integration", "price"]
    assert only_c2["objections_by_outcome"]["lost"] == [] and only_c2["disqualifications"] == 1


async def test_the_overdue_queue_oldest_first(april):
    created = {e.data.created_at: e.data for e in april.events if e.type == "deal.created"}
    hc2, hd = created[at("2025-04-10T08:00")], created[at("2025-04-19T20:00")]
    queue = await april.kpis("/v1/sla/overdue")
    assert queue == {
        "items": [{"deal_id": str(hc2.deal_id), "lead_id": str(hc2.lead_id), "campaign_id": "c2",
                   "channel": "email", "created_at": "2025-04-10T08:00:00Z", "hours_waiting": 244.0}],
        "next_cursor": None, "sla_accept_hours": 24.0, "now": "2025-04-20T12:00:00Z",
        "filters": {"campaign_id": None, "channel": None}, "attribution": "first_touch",
    }  # fmt: skip

    april.clock_at(at("2025-04-20T20:01"))  # HD's 24 h are over too
    first = await april.kpis("/v1/sla/overdue", limit=1)
    assert [(i["deal_id"], i["hours_waiting"]) for i in first["items"]] == [(str(hc2.deal_id), 252.0167)]
    rest = await april.kpis("/v1/sla/overdue", limit=1, cursor=first["next_cursor"])
    assert [(i["deal_id"], i["hours_waiting"]) for i in rest["items"]] == [(str(hd.deal_id), 24.0167)]
    assert rest["next_cursor"] is None
    assert [i["deal_id"] for i in (await april.kpis("/v1/sla/overdue", campaign_id="c1"))["items"]] == [str(hd.deal_id)]

    # Answered, it leaves the queue.
    lead = Lead([("c1", "cpc", at("2025-04-05"))], lead_id=hd.lead_id)
    await april.send([lead.accepted(hd.deal_id, at("2025-04-20T20:00"))])
    assert [i["deal_id"] for i in (await april.kpis("/v1/sla/overdue"))["items"]] == [str(hc2.deal_id)]
