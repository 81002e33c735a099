"""Property-based run over the OpenAPI schemas of leads, sales and metrics (ingest has its own,
test_ingest_openapi.py). Each service runs in-process against the real broker and a database
of its own, seeded through its own consumer and API (leads, deals open, won and lost, a
customer with revenue, KPI facts). Then hypothesis builds requests for every operation in
its /openapi.json: path parameters (ids of seeded rows, random UUIDs, junk), query
parameters (valid, boundary and junk values, NUL, huge numbers, odd datetimes) and bodies
(schema-shaped and broken: wrong types, extra fields, 1e400, NaN, negative and 3-decimal
amounts, long strings, deep nesting, not JSON at all).

The rule it holds the services to: bad input always gets a clear 4xx and never a 500 — the
answer is never a 5xx, and every 4xx is problem+json whose `status` is the response's.

The requests change the state they run against (a lead moves, a deal closes), so hypothesis
may call a failure "flaky" when replaying it: the failing request and its error are in the
report all the same.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.leads.main import build_app as build_leads
from services.leads.settings import LeadsSettings
from services.sales.main import build_app as build_sales
from services.sales.settings import SalesSettings
from shared.events import Envelope
from shared.kafka import EventProducer
from shared.topics import ALL_TOPICS, FORM_SUBMISSIONS, LEAD_EVENTS, ensure_topics
from tests.integration.test_leads import submission
from tests.integration.test_metrics_support import Lead as MetricsLead
from tests.integration.test_metrics_support import campaign, running_metrics
from tests.integration.test_sales import Lead as SalesLead
from tests.support import (
    BODY_JUNK,
    JSON_VALUES,
    Hints,
    RawJson,
    eventually,
    from_schema,
    inline_refs,
    long,
    requests_for,
    serve,
    to_json,
)

pytestmark = [
    pytest.mark.integration,
    # Hypothesis flags a change of `random`'s state while it draws (and spells out the whole
    # strategy to say so); here the service's own background work (Kafka clients) runs
    # meanwhile on the event loop in another thread.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

EXAMPLES_PER_RUN = 200  # two runs per operation: one with the token and ids right, one wild
TOKEN = "test-token"
NOW = datetime.now(UTC)
DAY = timedelta(days=1)

# --- values the schemas do not describe ---------------------------------------------------


OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
# The first and last moments Python has, with offsets that push them past year 1 or 9999 in UTC.
EXTREME_MOMENTS = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59.999999-14:00",
        "0001-01-01T09:30:00+23:59",
        "9999-12-31T12:00-23:59",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00-14:00",
        "9999-12-31T23:59:59+14:00",
    ]
)
# Up to 40 days before the moment of the request (so after the rows the run just created).
RECENT = st.integers(0, 40 * 24 * 3600).map(lambda s: (datetime.now(UTC) - timedelta(seconds=s)).isoformat())
TIMESTAMPS = st.one_of(
    # Recent moments in UTC: backfills a service can accept, so the run reaches its rules.
    RECENT,
    EXTREME_MOMENTS,
    RECENT,
    EXTREME_MOMENTS,
    # Any moment of years 1-9999: naive, with an IANA zone or with any offset; or a date.
    st.datetimes(timezones=st.none() | st.timezones() | OFFSETS).map(lambda d: d.isoformat()),
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01",
            "9999-12-31",
            "2025-03-01T10:00:00",
            "2025-03-01T10:00:00+24:00",
            "2025-02-29T00:00:00Z",
            "2025-03-01 10:00:00Z",
            "20250301T100000Z",
            "2025-03-01T10:00:00.123456789Z",
            "1970-01-01T00:00:00Z",
            "-2025-03-01T00:00:00Z",
            "+12025-03-01T00:00:00Z",
            "1741000000",  # pydantic reads numbers as Unix times
            "-62135596800",
            "253402300800",
            "1e20",
            "now",
            "",
        ]
    ),
)
VALID_AMOUNTS = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999999999999.99"), places=2)
AMOUNTS = st.one_of(
    VALID_AMOUNTS.map(str),
    VALID_AMOUNTS.map(str),
    VALID_AMOUNTS.map(str),
    st.integers(1, 10**6).map(lambda cents: cents / 100),  # a JSON number
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.floats(),
    st.sampled_from(
        [
            RawJson("1e400"),
            RawJson("-1e400"),
            RawJson("1E+400"),
            RawJson("1e-400"),
            RawJson("NaN"),
            RawJson("Infinity"),
            RawJson("-Infinity"),
            RawJson("1" + "0" * 30),
            "1e400",
            "NaN",
            "sNaN",
            "-NaN",
            "Infinity",
            "-5",
            "-0.01",
            "0",
            "0.00",
            "-0",
            "10.999",
            "0.001",
            "1e-7",
            "1E+2",
            "99999999999999.99",
            "100000000000000.00",
            "9" * 40,
            " 12.50 ",
            "12,50",
            "1_000",
            "",
            "€12",
            "\u0661\u0662",  # Arabic-Indic digits
            12.5,
            10.001,
            1.5e300,
            5e-324,
            0,
            -1,
            10**20,
            True,
        ]
    ),
)
# Where integer columns and Python conversions end.
BOUNDARY_INTEGERS = [0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30]
LIMITS = st.integers(1, 200) | st.sampled_from(
    [1, 2, 199, 200, 201, 500, 501, *BOUNDARY_INTEGERS, "1e3", "9" * 40, "1.5", "0x10"]
)
DATES = st.dates().map(lambda d: d.isoformat()) | st.sampled_from(
    ["0001-01-01", "9999-12-31", "2025-02-29", "2025-13-01", "10000-01-01", "2025-03-01T10:00:00Z", 0, 1e20]
)
CURRENCIES = st.just("EUR") | st.sampled_from(["EUR", "eur", " EUR ", "USD", "EUR\x00", "ＥＵＲ", "", "x" * 11])
QUERY_JUNK = (
    st.text(max_size=30)
    | long("x", 201, 10_000)
    | st.sampled_from(
        ["", " ", "\x00", "a\x00b", "null", "NaN", "inf", "-1", "0", "1e400", "9" * 40, "-" + "9" * 40]
        + ["%", "'", '"', "[]", "{}", "true", "../", b"\xff\xfe", "\u0661"]
    )
)
PATH_JUNK = (
    st.text(min_size=1, max_size=40)
    | long("x", 5000)
    | st.sampled_from(
        [
            "not-a-uuid",
            "0",
            "-1",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            uuid.uuid4().hex,
            str(uuid.uuid4()).upper(),
            "{" + str(uuid.uuid4()) + "}",
            "\x00",
            "null",
            " ",
        ]
    )
)
# Text a database or an encoder may choke on: NUL, a lone surrogate, a right-to-left mark.
NASTY_TEXT = st.sampled_from(["\x00", "a\x00b", "\ud800", "\u202e", " "]) | long("x", 501, 100_000)
ETAGS = st.sampled_from(["*", 'W/"x"', ",", ""]) | st.text(
    st.characters(min_codepoint=32, max_codepoint=126), max_size=40
)
# Bodies that are not a JSON object of any kind, under the content types a client might send.
NOT_JSON = st.tuples(
    st.sampled_from(
        ["application/json", "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded"]
    ),
    st.sampled_from([b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe{}", b'{"a": 1}{"b": 2}'])
    | long("[", 5000).map(str.encode)
    | long("x", 600_000).map(str.encode),  # over the request size limit
)
TIMESTAMP_FIELDS = ("occurred_at", "created_from", "created_to", "from", "to")
COMMON_HINTS: Hints = {
    **dict.fromkeys(TIMESTAMP_FIELDS, TIMESTAMPS | st.sampled_from([1741000000, 1e20, -1])),
    "amount": AMOUNTS,
    "limit": LIMITS,
    "expected_close_date": DATES,
    "currency": CURRENCIES,
}


def spoiled(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Bodies as the schema describes them, one string in them (or in a list) made nasty."""

    def spoil(parts: tuple[Any, str, int]) -> Any:
        body, text, pick = parts
        if not isinstance(body, dict):
            return body
        texts = sorted(k for k, v in body.items() if isinstance(v, str) or (isinstance(v, list) and v))
        if not texts:
            return body
        name = texts[pick % len(texts)]
        return {**body, name: [*body[name][:-1], text] if isinstance(body[name], list) else text}

    return st.tuples(valid, NASTY_TEXT, st.integers(0, 100)).map(spoil)


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def known(pool: list[str]) -> st.SearchStrategy[str]:
    """One of the pool's ids, read at draw time: rows the run creates join the pool. Newest
    first, as hypothesis favours the first: a deal just created is still open."""
    return st.integers(0, 2**16).map(lambda i: pool[-1 - i % len(pool)])


def names(*seeded: str) -> st.SearchStrategy[str]:
    """A filter value: one the seeded rows have, or anything."""
    return st.sampled_from(seeded) | st.text(max_size=30) | st.sampled_from(["", "spring\x00"]) | long("x", 201)


def cursors(valid: list[str]) -> st.SearchStrategy[str]:
    """Cursors the API returned, and ones it never could have: base64 of a keyset position
    with odd values, of "seq:n" with any n, of anything; not base64 at all."""
    position = st.tuples(EXTREME_MOMENTS | TIMESTAMPS, st.uuids().map(str) | JSON_VALUES)
    return st.one_of(
        position.map(lambda t: cursor_of(json.dumps(list(t)))),
        st.sampled_from(valid),
        (st.integers() | st.sampled_from(BOUNDARY_INTEGERS)).map(lambda n: cursor_of(f"seq:{n}")),
        st.text(max_size=30).map(cursor_of),
        st.text(max_size=50),
    )


# --- one running service ----------------------------------------------------------------


@dataclass
class Target:
    """A running service, its client and what the run may pick from."""

    app: Any
    client: httpx.AsyncClient
    # Path parameter name -> ids of existing rows (grows with the rows the run creates).
    ids: dict[str, list[str]]
    hints: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)
    headers: st.SearchStrategy[dict[str, str]] = field(default_factory=lambda: st.just({}))
    # Path parameter name -> makes a new row, returns its id: a deal still open to win or lose.
    fresh: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)


@asynccontextmanager
async def producer_for(topics: str, topic_prefix: str) -> AsyncIterator[EventProducer]:
    producer = EventProducer(topics, client_id="test-fuzz", send_timeout=10, topic_prefix=topic_prefix)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def ok(response: httpx.Response) -> dict:
    assert response.status_code < 300, response.text
    return response.json()


@asynccontextmanager
async def leads_target(make_settings, topics: str, topic_prefix: str) -> AsyncIterator[Target]:
    """Three leads from form submissions (one with three touches): disqualified, mql, lead."""
    await ensure_topics(topics, prefix=topic_prefix)
    app = build_leads(await make_settings(LeadsSettings))
    async with serve(app) as client, producer_for(topics, topic_prefix) as producer:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        emails = ["fuzz-a@example.com", "fuzz-b@example.com", "fuzz-c@example.com"]
        sent = [submission(emails[0], minutes=m, campaign="spring", medium="cpc") for m in (0, 5, 10)]
        sent += [submission(email, campaign="autumn", medium="email") for email in emails[1:]]
        await producer.publish_many(FORM_SUBMISSIONS, sent)

        async def all_leads() -> list | None:
            items = (await ok(await client.get("/v1/leads", params={"limit": 10})))["items"]
            return items if len(items) == 3 and max(i["touch_count"] for i in items) == 3 else None

        leads = await eventually(all_leads)
        lead_ids = [lead["lead_id"] for lead in leads]
        # A lead in each stage a move starts from; the newest, picked most, disqualified: it may
        # go back to "lead", the stage hypothesis tries most.
        await ok(await client.post(f"/v1/leads/{lead_ids[-1]}/stage", json={"stage": "disqualified", "reason": "x"}))
        await ok(await client.post(f"/v1/leads/{lead_ids[1]}/stage", json={"stage": "mql", "reason": "fuzz"}))
        busy = next(lead["lead_id"] for lead in leads if lead["touch_count"] == 3)
        valid_cursors = [
            (await ok(await client.get("/v1/leads", params={"limit": 1})))["next_cursor"],
            (await ok(await client.get(f"/v1/leads/{busy}/touches", params={"limit": 1})))["next_cursor"],
        ]
        yield Target(
            app,
            client,
            ids={"lead_id": lead_ids},
            hints={
                "cursor": cursors(valid_cursors),
                "email": names(*emails, " FUZZ-A@example.com ") | st.emails(),
                "campaign_id": names("spring", "autumn"),
                "channel": names("cpc", "email"),
            },
        )


@asynccontextmanager
async def sales_target(make_settings, topics: str, topic_prefix: str) -> AsyncIterator[Target]:
    """Four leads from lead events; deals open, won (a customer, with revenue) and lost."""
    await ensure_topics(topics, ALL_TOPICS, prefix=topic_prefix)
    settings = await make_settings(SalesSettings, consumer_group=f"sales-{topic_prefix.rstrip('.')}")
    app = build_sales(settings)
    async with serve(app) as client, producer_for(topics, topic_prefix) as producer:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        leads = [SalesLead() for _ in range(4)]
        await producer.publish_many(LEAD_EVENTS, [lead.created() for lead in leads])
        lead_ids = [str(lead.lead_id) for lead in leads]

        async def all_known() -> bool:
            query = "SELECT count(*) FROM leads WHERE lead_id = ANY($1::uuid[])"
            return await app.state.pool.fetchval(query, [lead.lead_id for lead in leads]) == len(leads)

        await eventually(all_known)
        backfill = (NOW - 20 * DAY).isoformat()
        deals = [
            (await ok(await client.post("/v1/deals", json={"lead_id": lead_id, "occurred_at": backfill})))["deal_id"]
            for lead_id in [*lead_ids, lead_ids[0]]
        ]
        await ok(await client.post(f"/v1/deals/{deals[0]}/won", json={"amount": "100.00"}))
        await ok(await client.post(f"/v1/deals/{deals[1]}/lost", json={"reason": "price", "objections": ["budget"]}))
        revenue_id = str(uuid.uuid4())
        revenue = {"amount": "10.00", "kind": "renewal", "event_id": revenue_id}
        await ok(await client.post(f"/v1/customers/{lead_ids[0]}/revenue", json=revenue))
        valid_cursor = (await ok(await client.get("/v1/deals", params={"limit": 1})))["next_cursor"]
        made = itertools.count()

        async def open_deal() -> str:
            body = {"lead_id": lead_ids[next(made) % len(lead_ids)], "occurred_at": backfill}
            return (await ok(await client.post("/v1/deals", json=body)))["deal_id"]

        yield Target(
            app,
            client,
            ids={"lead_id": lead_ids, "deal_id": deals},
            hints={
                "cursor": cursors([valid_cursor]),
                "campaign_id": names("spring"),
                "event_id": st.sampled_from([revenue_id]) | st.uuids().map(str) | st.text(max_size=40),
                "lead_id": st.one_of(known(lead_ids), known(lead_ids), st.uuids().map(str), PATH_JUNK),
            },
            fresh={"deal_id": open_deal},
        )


@asynccontextmanager
async def metrics_target(make_settings, topics: str, topic_prefix: str) -> AsyncIterator[Target]:
    """A few recent leads, deals won and lost, revenue and campaign facts in the projection."""
    async with running_metrics(make_settings, topic_prefix) as metrics:
        won, lost = uuid.uuid4(), uuid.uuid4()
        ana = MetricsLead([("c1", "cpc", NOW - 10 * DAY)])
        bea = MetricsLead([("c2", "email", NOW - 9 * DAY), ("c1", "cpc", NOW - 3 * DAY)])
        events: list[Envelope] = [
            ana.created(), ana.stage("sql", NOW - 9 * DAY), ana.deal_created(won, NOW - 9 * DAY),
            ana.won(won, NOW - 5 * DAY, "1200.00"), ana.revenue(NOW - 2 * DAY, "99.99"),
            bea.created(), bea.stage("mql", NOW - 8 * DAY), bea.deal_created(lost, NOW - 8 * DAY),
            bea.lost(lost, NOW - 4 * DAY, "price", ["budget", "timing"]),
            campaign("c1", "cpc", "spend", NOW - 10 * DAY, cost="300.00"),
            campaign("c1", "cpc", "click", NOW - 10 * DAY, count=40),
            campaign("c2", "email", "impression", NOW - 9 * DAY, count=1000),
        ]  # fmt: skip
        await metrics.send(events)
        yield Target(
            metrics.app,
            metrics.client,
            ids={},
            hints={"campaign_id": names("c1", "c2"), "channel": names("cpc", "email")},
            headers=st.fixed_dictionaries({}, optional={"If-None-Match": ETAGS}),
        )


TARGETS = {"leads": leads_target, "sales": sales_target, "metrics": metrics_target}

# --- requests from the schema -----------------------------------------------------------


@dataclass
class Call:
    method: str
    url: str  # {name} where a fresh row's id goes
    headers: dict[str, str]
    content: bytes | None
    fresh: tuple[str, ...] = ()


FRESH = "(a fresh row)"


ABSENT = object()


def query_text(value: Any) -> Any:
    """A generated value as a query parameter: null means leave it out."""
    if value is None:
        return ABSENT
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | bytes):
        return value
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def calls_for(target: Target, method: str, path: str, operation: dict[str, Any], wild: bool) -> st.SearchStrategy[Call]:
    """Requests for one operation. Not `wild`: the token and the ids are right and the body is
    JSON, so the rest of the request gets as far as the service's rules and its database."""
    hints = {**COMMON_HINTS, **target.hints}
    path_values: dict[str, st.SearchStrategy[str]] = {}
    required: dict[str, st.SearchStrategy[Any]] = {}  # query parameters
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for parameter in operation.get("parameters", []):
        name = parameter["name"]
        if parameter["in"] == "path":
            ids = known(target.ids[name])
            if name in target.fresh:
                ids = st.just(FRESH) | ids
            path_values[name] = st.one_of(ids, ids, st.uuids().map(str), PATH_JUNK) if wild else ids
        elif parameter["in"] == "query":
            value = hints[name] if name in hints else from_schema(parameter["schema"])
            value = (st.one_of(value, value, QUERY_JUNK) if wild else value).map(query_text)
            if parameter.get("required"):
                required[name] = st.one_of(value, value, value, st.just(ABSENT))  # now and then missing
            else:
                optional[name] = value
    parameter_names = sorted([*required, *optional, "unknown"])
    query = st.tuples(
        st.fixed_dictionaries(required, optional=optional),
        # Wild: unknown and repeated parameters.
        st.lists(st.tuples(st.sampled_from(parameter_names), QUERY_JUNK), max_size=2 if wild else 0),
    ).map(lambda pair: [(k, v) for k, v in pair[0].items() if v is not ABSENT] + pair[1])
    body: st.SearchStrategy[tuple[str, bytes] | None] = st.none()
    if media := operation.get("requestBody", {}).get("content"):
        schema = media["application/json"]["schema"]
        # Every property given, too: hypothesis favours leaving optional ones out.
        full = {**schema, "required": sorted(schema.get("properties", {}))}
        valid = st.one_of(from_schema(full, hints), from_schema(schema, hints))
        as_json = st.one_of(valid, valid, spoiled(valid)).map(lambda b: ("application/json", to_json(b).encode()))
        anything = requests_for(media, hints, BODY_JUNK)
        body = st.one_of(anything, NOT_JSON) if wild else st.one_of(as_json, as_json, anything)
    auth = st.sampled_from([f"Bearer {TOKEN}"] * 3 + ["", "Bearer wrong"]) if wild else st.just(f"Bearer {TOKEN}")

    # Wild: now and then a method the route does not have.
    methods = st.sampled_from([method] * 15 + ["PUT", "DELETE", "OPTIONS"]) if wild else st.just(method)

    def build(parts: tuple) -> Call:
        method, path_args, query_args, content, headers, authorization = parts
        fresh = tuple(k for k, v in path_args.items() if v == FRESH)
        # A fresh row's id is filled in when the request is sent: its place stays "{name}".
        url = path.format(**{k: f"{{{k}}}" if k in fresh else quote(v, safe="") for k, v in path_args.items()})
        if query_args:
            url += "?" + urlencode(query_args, quote_via=quote)
        headers = {**headers, "Authorization": authorization} if "Authorization" not in headers else headers
        if content is None:
            return Call(method, url, headers, None, fresh)
        content_type, data = content
        if content_type:
            headers = {**headers, "Content-Type": content_type}
        return Call(method, url, headers, data, fresh)

    return st.tuples(methods, st.fixed_dictionaries(path_values), query, body, target.headers, auth).map(build)


def operations(app) -> list[tuple[str, str, dict[str, Any]]]:
    spec = app.openapi()
    components = spec.get("components", {}).get("schemas", {})
    return [
        (method.upper(), path, inline_refs({k: v for k, v in operation.items() if k != "responses"}, components))
        for path, item in spec["paths"].items()
        if path.startswith("/v1/")
        for method, operation in item.items()
    ]


def check(response: httpx.Response, ids: dict[str, list[str]]) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"] == "application/problem+json", response.headers
        assert response.json()["status"] == response.status_code, response.text[:500]
    elif response.status_code < 300 and response.headers["content-type"] == "application/json":
        created = response.json()  # a new deal joins the pool of deal ids, and so on
        for name, pool in ids.items():
            if isinstance(created, dict) and isinstance(created.get(name), str) and created[name] not in pool:
                pool.append(created[name])


def explore(calls: st.SearchStrategy[Call], send: Callable[[Call], httpx.Response], ids: dict) -> Counter:
    """Runs one operation's examples; the statuses it saw."""
    seen: Counter = Counter()

    @given(call=calls)
    @settings(max_examples=EXAMPLES_PER_RUN, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def never_a_server_error(call: Call) -> None:
        response = send(call)
        seen[response.status_code] += 1
        check(response, ids)

    never_a_server_error()
    return seen


@pytest.mark.parametrize("service", sorted(TARGETS))
async def test_no_request_generated_from_the_spec_gets_a_5xx(service, make_settings, topics, topic_prefix, caplog):
    # Not a log line per request: masking emails in 10 kB URLs takes the logger seconds.
    caplog.set_level(logging.WARNING, logger="httpx")
    async with TARGETS[service](make_settings, topics, topic_prefix) as target:
        ops = operations(target.app)
        assert ops, "no operation in the schema"
        for _, path, operation in ops:
            named = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert named <= set(target.ids), f"{path}: seed rows for {named - set(target.ids)}"
        loop = asyncio.get_running_loop()

        async def request(call: Call) -> httpx.Response:
            url = call.url
            for name in call.fresh:
                url = url.replace(f"{{{name}}}", await target.fresh[name]())
            return await target.client.request(call.method, url, headers=call.headers, content=call.content)

        def send(call: Call) -> httpx.Response:
            # The app runs on this test's event loop; hypothesis drives it from a thread.
            return asyncio.run_coroutine_threadsafe(request(call), loop).result(timeout=60)

        statuses: dict[str, Counter] = {}
        for method, path, operation in ops:
            seen = statuses[f"{method} {path}"] = Counter()
            for wild in (False, True):
                calls = calls_for(target, method, path, operation, wild)
                seen.update(await asyncio.to_thread(explore, calls, send, target.ids))
    print(service, {op: dict(sorted(seen.items())) for op, seen in statuses.items()})
    for op, seen in statuses.items():
        assert any(status < 300 for status in seen), (op, seen)  # the run reached past validation
        assert 422 in seen, (op, seen)
