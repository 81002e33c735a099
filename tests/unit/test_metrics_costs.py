"""Full costs: a cost spread evenly over its period counts pro rata by time, to the cent, and
the shares of any split of its period add up to exactly its amount; the costs and cac_full
and roas KPIs built from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from services.metrics.domain import (
    Cost,
    Period,
    RawAggregates,
    allocate_costs,
    bucket_periods,
    cost_share,
    kpis,
    parse_instant,
)

Q1 = Period(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))  # 31 + 28 + 31 = 90 days


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_a_quarter_spread_over_uneven_months():
    months = bucket_periods(Q1, "month", 366)
    assert [cost_share(Decimal("9000.00"), Q1, m) for m in months] == [
        Decimal("3100.00"), Decimal("2800.00"), Decimal("3100.00"),
    ]  # fmt: skip
    # Mid-January to mid-February: 17 + 14 days of 90.
    assert cost_share(Decimal("9000.00"), Q1, Period(utc(2025, 1, 15), utc(2025, 2, 15))) == Decimal("3100.00")
    # Outside the cost, or only partly inside: only the overlap counts.
    assert cost_share(Decimal("9000.00"), Q1, Period(utc(2024, 12, 1), utc(2025, 1, 2))) == Decimal("100.00")
    assert cost_share(Decimal("9000.00"), Q1, Period(utc(2025, 4, 1), utc(2025, 5, 1))) == Decimal("0.00")
    assert cost_share(Decimal("9000.00"), Q1, Period(utc(2024, 1, 1), utc(2026, 1, 1))) == Decimal("9000.00")


def test_cents_that_do_not_divide_go_where_the_running_total_rounds():
    three_days = Period(utc(2025, 3, 1), utc(2025, 3, 4))
    days = bucket_periods(three_days, "day", 366)
    # Accrued 33.333… → 33.33, 66.666… → 66.67, 100: the middle day gets the extra cent.
    assert [cost_share(Decimal("100.00"), three_days, d) for d in days] == [
        Decimal("33.33"), Decimal("33.34"), Decimal("33.33"),
    ]  # fmt: skip
    # One cent over a week: it lands in the day its half-way point falls in (half up).
    week = Period(utc(2025, 3, 3), utc(2025, 3, 10))
    assert [cost_share(Decimal("0.01"), week, d) for d in bucket_periods(week, "day", 366)] == [
        Decimal("0.00"), Decimal("0.00"), Decimal("0.00"), Decimal("0.01"), Decimal("0.00"), Decimal("0.00"),
        Decimal("0.00"),
    ]  # fmt: skip


def test_time_is_real_time_across_a_dst_change():
    # Madrid's March 2025 lasts 743 hours: 743.00 is 1.00 an hour, so March 30 (23 h) costs 23.00.
    madrid = ZoneInfo("Europe/Madrid")
    march = Period(parse_instant("2025-03-01", "from", madrid), parse_instant("2025-04-01", "to", madrid))
    days = bucket_periods(march, "day", 366, madrid)
    shares = [cost_share(Decimal("743.00"), march, d) for d in days]
    assert shares[28:] == [Decimal("24.00"), Decimal("23.00"), Decimal("24.00")]
    assert sum(shares) == Decimal("743.00")


@st.composite
def split_costs(draw):
    cents = draw(st.integers(min_value=1, max_value=10**14))
    start = utc(2020, 1, 1) + timedelta(microseconds=draw(st.integers(0, 10**14)))
    length = timedelta(microseconds=draw(st.integers(1, 10**14)))
    cost = Period(start, start + length)
    # Cuts anywhere, inside or outside the cost's period, in any number.
    cuts = draw(st.lists(st.integers(-(10**13), 10**14 + 10**13), min_size=0, max_size=12))
    bounds = sorted({start - timedelta(days=1), start + length + timedelta(days=1)}
                    | {start + timedelta(microseconds=c) for c in cuts})  # fmt: skip
    return Decimal(cents) / 100, cost, [Period(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


@given(split_costs())
def test_any_split_of_a_cost_adds_up_to_its_amount_to_the_cent(case):
    amount, cost, parts = case
    shares = [cost_share(amount, cost, part) for part in parts]
    assert sum(shares) == amount
    for part, share in zip(parts, shares, strict=True):
        overlap = max(timedelta(0), min(part.end, cost.end) - max(part.start, cost.start))
        exact = (
            amount
            * Decimal(overlap // timedelta(microseconds=1))
            / Decimal((cost.end - cost.start) // timedelta(microseconds=1))
        )
        assert share >= 0 and abs(share - exact) < Decimal("0.01")  # never a cent off the exact share


def test_costs_are_allocated_by_team_category_and_breakdown_value():
    costs = [
        Cost("media", "marketing", Decimal("9000.00"), Q1, campaign_id="spring", channel="cpc"),
        Cost("salaries", "sales", Decimal("900.00"), Q1),
        Cost("tools", "marketing", Decimal("90.00"), Q1, channel="email"),
        Cost("media", "sales", Decimal("30.00"), Period(utc(2025, 3, 1), utc(2025, 3, 31))),  # trade fair ads
    ]
    months = bucket_periods(Q1, "month", 366)
    totals = allocate_costs(costs, months)
    march = totals[(2, None)]
    assert (march.media_costs, march.marketing_costs, march.sales_costs) == (
        Decimal("3130.00"), Decimal("3131.00"), Decimal("340.00"),
    )  # fmt: skip
    by_campaign = allocate_costs(costs, months, "campaign")
    assert by_campaign[(1, "spring")].marketing_costs == Decimal("2800.00")
    assert by_campaign[(1, None)].sales_costs == Decimal("280.00") and (1, "cpc") not in by_campaign
    by_channel = allocate_costs(costs, months, "channel")
    assert by_channel[(0, "email")].marketing_costs == Decimal("31.00")


def test_costs_cac_full_and_roas():
    raw = RawAggregates(spend=Decimal("400.00"), new_customers=3, won_revenue=Decimal("1800.00"),
                        media_costs=Decimal("100.00"), marketing_costs=Decimal("350.00"),
                        sales_costs=Decimal("250.01"))  # fmt: skip
    result = kpis(raw)
    assert result["costs"] == {"media": "500.00", "marketing": "750.00", "sales": "250.01", "total": "1000.01"}
    assert result["cac"] == "133.33"  # ad spend only, as before
    assert result["cac_full"] == "333.34"  # 1000.01 / 3 = 333.336…
    assert result["roas"] == 4.5  # 1800 / 400
    nothing = kpis(RawAggregates(sales_costs=Decimal("10.00")))
    assert (nothing["cac_full"], nothing["roas"]) == (None, None)
    assert nothing["costs"] == {"media": "0.00", "marketing": "0.00", "sales": "10.00", "total": "10.00"}
