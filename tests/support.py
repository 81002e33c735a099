"""Helpers for tests: reading topics, serving an app in-process, waiting for a condition,
and hypothesis strategies that build requests from an OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from hypothesis import strategies as st

from shared.events import Envelope

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local"


class TopicReader:
    """Reads what is published to a topic after the reader was opened."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.records: list = []

    async def open(self) -> None:
        await self.consumer.start()
        # A topic created a moment ago may not be in the metadata yet: ask until it is.
        for _ in range(100):
            partitions = self.consumer.partitions_for_topic(self.topic)
            if partitions:
                break
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"topic {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions or ())]
        self.consumer.assign(tps)
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            self.consumer.seek(tp, ends[tp])

    async def close(self) -> None:
        await self.consumer.stop()

    async def read_until(self, done: Callable[[list], bool], timeout: float = 20.0) -> list:
        """Collect records until `done(records)` holds; fails the test on timeout."""

        async def collect() -> None:
            while not done(self.records):
                batch = await self.consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    self.records.extend(records)

        await asyncio.wait_for(collect(), timeout)
        return self.records

    async def events(self, count: int, timeout: float = 20.0) -> list[Envelope]:
        records = await self.read_until(lambda r: len(r) >= count, timeout)
        return [Envelope.from_bytes(r.value) for r in records]

    async def quiet(self, seconds: float = 1.5) -> list:
        """Everything that arrives within `seconds` (to show that nothing more came)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            batch = await self.consumer.getmany(timeout_ms=int(left * 1000) + 1)
            for records in batch.values():
                self.records.extend(records)
        return self.records


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (migrations, consumer, relay) and talk to it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[object]], timeout: float = 30.0, interval: float = 0.1):
    """Poll `check` until it returns something truthy; fail with its last value on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateBroker:
    """A broker of the test's own (the same jars and script as `make infra-up`, its own
    state dir and ports), so a test can stop and restart it without disturbing anyone."""

    def __init__(self, state_dir: Path) -> None:
        self.env = os.environ | {
            "KAFKA_STATE_DIR": str(state_dir),
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
        }
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def start(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], env=self.env, check=True, timeout=240)

    def stop(self) -> None:
        subprocess.run([str(LOCAL / "kafka.sh"), "stop"], env=self.env, check=True, timeout=240)


# --- requests generated from an OpenAPI schema -------------------------------------------
# (plain hypothesis, not schemathesis: test_ingest_openapi.py says why)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
Hints = Mapping[str, st.SearchStrategy[Any]]


class RawJson(str):
    """Text that goes into a JSON document as it is: 1e400, NaN, 5000 nested arrays."""


def long(text: str, *sizes: int) -> st.SearchStrategy[str]:
    """`text` repeated: very long values (a strategy whose repr stays short)."""
    return st.sampled_from(sizes).map(lambda n: text * n)


# Anything at all in place of a field: JSON of every shape and values Python's JSON reader
# takes but a database or a Decimal may not.
BODY_JUNK = st.one_of(
    JSON_VALUES,
    long("x", 201, 501, 100_000),
    long("9", 5000).map(RawJson),  # more digits than Python converts to an int
    long("[", 5000).map(lambda opened: RawJson(opened + "]" * len(opened))),  # deeper than json recurses
    st.sampled_from(
        [
            RawJson("1e400"),
            RawJson("NaN"),
            RawJson("-Infinity"),
            "\x00",
            "a\x00b",
            "\ud800",  # a lone surrogate, sent as the JSON escape \ud800
            2**64,
            -(2**63) - 1,
            1e308,
            [],
            {},
            {"a": {"a": {"a": {"a": {"a": {"a": {"a": {"a": []}}}}}}}},
        ]
    ),
)


def to_json(value: Any) -> str:
    """json.dumps, except that RawJson values are written verbatim."""
    if isinstance(value, RawJson):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def inline_refs(node: Any, components: dict[str, Any]) -> Any:
    """A schema from /openapi.json with its "#/components/schemas/..." references inlined."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline_refs(components[node["$ref"].rsplit("/", 1)[-1]], components)
        return {k: inline_refs(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [inline_refs(v, components) for v in node]
    return node


def from_schema(schema: dict[str, Any], hints: Hints | None = None) -> st.SearchStrategy[Any]:
    """Values conforming to the (inlined) JSON schemas FastAPI/pydantic publish. `hints` gives
    the values for properties of that name instead (where a schema says "string" and the API
    wants an amount, or to send ids of rows that exist)."""
    hints = hints or {}
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return st.one_of([from_schema(option, hints) for option in schema[union]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(int(schema.get("minimum", -(2**40))), int(schema.get("maximum", 2**40)))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        return string_of(schema)
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {}), hints),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 5), 5),
        )
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})

        def value(name: str) -> st.SearchStrategy[Any]:
            return hints[name] if name in hints else from_schema(properties[name], hints)

        # A const (a batch item's "type") is what picks the union member: always send it.
        required = {name for name, spec in properties.items() if name in schema.get("required", ()) or "const" in spec}
        body = st.fixed_dictionaries(
            {name: value(name) for name in required},
            optional={name: value(name) for name in properties if name not in required},
        )
        extra = schema.get("additionalProperties", False)
        if extra is False:
            return body
        names = string_of({"type": "string", **schema.get("propertyNames", {})})
        extras = st.dictionaries(names, from_schema(extra if isinstance(extra, dict) else {}, hints), max_size=3)
        return st.tuples(body, extras).map(lambda pair: {**pair[1], **pair[0]})
    return JSON_VALUES


def string_of(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    match schema.get("format"):
        case "uuid":
            return st.uuids().map(str)
        case "date-time":
            zones = st.timezones() | st.just(None)
            return st.datetimes(timezones=zones).map(lambda d: d.isoformat())
        case "date":
            return st.dates().map(lambda d: d.isoformat())
        case "email":
            return st.emails()
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))


def broken(valid: st.SearchStrategy[dict], junk: st.SearchStrategy[Any] = JSON_VALUES) -> st.SearchStrategy[Any]:
    """Conforming bodies with one thing wrong (a field replaced by `junk`, a field missing, an
    unknown field), or not even JSON objects."""

    def replace_one(pair: tuple[dict, Any, int]) -> Any:
        body, value, pick = pair
        if not isinstance(body, dict) or not body:
            return value
        body = dict(body)
        body[sorted(body)[pick % len(body)]] = value
        return body

    def drop_one(pair: tuple[dict, int]) -> Any:
        body, pick = pair
        if isinstance(body, dict) and body:
            body = dict(body)
            del body[sorted(body)[pick % len(body)]]
        return body

    return st.one_of(
        st.tuples(valid, junk, st.integers(0, 100)).map(replace_one),
        st.tuples(valid, st.integers(0, 100)).map(drop_one),
        st.tuples(valid, st.text(min_size=1, max_size=10), junk).map(
            lambda t: {**t[0], t[1]: t[2]} if isinstance(t[0], dict) else t[0]
        ),
        junk,
    )


def form_text(text: str) -> str:
    """A lone surrogate (a JSON body can carry one as \\ud800) cannot be URL-encoded: a browser
    would have replaced it, so the form gets U+FFFD there instead."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def requests_for(
    media: dict[str, Any], hints: Hints | None = None, junk: st.SearchStrategy[Any] = JSON_VALUES
) -> st.SearchStrategy[tuple[str, bytes]]:
    """(content type, body) pairs for one operation, from its documented media types."""
    options = []
    for content_type, spec in media.items():
        valid = from_schema(spec["schema"], hints)
        bodies = st.one_of(valid, broken(valid, junk))
        if content_type == "application/json":
            options.append(bodies.map(lambda b: ("application/json", to_json(b).encode())))
        else:  # a form: flat string values only
            forms = bodies.filter(lambda b: isinstance(b, dict)).map(
                lambda b: {form_text(str(k)): form_text(v if isinstance(v, str) else to_json(v)) for k, v in b.items()}
            )
            options.append(forms.map(lambda b, ct=content_type: (ct, str(httpx.QueryParams(b)).encode())))
    # The wrong content type, or bytes that are not JSON at all.
    options.append(
        st.tuples(
            st.sampled_from(["text/plain", "", "application/json", "multipart/form-data"]), st.binary(max_size=64)
        )
    )
    return st.one_of(options)
