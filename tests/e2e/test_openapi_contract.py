"""The OpenAPI document of each service, held to account by Schemathesis 4's CLI against the
four services running as real processes on the real broker and database.

`schemathesis run <service>/openapi.json --checks all` generates requests from each
operation's declared parameters and bodies (valid ones and, deliberately, invalid ones) and
checks every answer against the document: no 5xx, only declared status codes, content types,
headers and bodies, valid data accepted and invalid data rejected, 405 with `Allow` for
undeclared methods, and that auth is enforced (for operations whose document declares a
security scheme). Shared settings are in schemathesis.toml at the repository root; every
check is on and no operation is left out. Expected to fail until the documents (and a few
answers) are fixed: see the commit that added this test.

No fixed seed and no `--generation-deterministic`: each run explores new inputs, which is
the point of a fuzzer kept in the suite (derandomizing would make it stable by never looking
anywhere new, and Schemathesis then also drops its example database). Runs stay reproducible
in the two ways Hypothesis intends: Schemathesis prints the seed it used (`Seed: N`), so
`--seed N` replays a run exactly, and failing examples go to a persistent example database
(.hypothesis/schemathesis, git-ignored) that the next run replays first. Every failure also
comes with a curl line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.topics import delete_topics
from tests.e2e.stack import API_TOKEN, ROOT, SERVICES, WRITE_KEY, Stack

pytestmark = pytest.mark.e2e

CONFIG = ROOT / "schemathesis.toml"
HOOKS = Path(__file__).parent / "schemathesis_hooks.py"  # what the documents cannot say
# Per service (about 15-45 s each today); a hung run fails instead of blocking the suite.
RUN_TIMEOUT_SECONDS = 240
CREDENTIALS = {service: API_TOKEN for service in SERVICES} | {"ingest": WRITE_KEY}


@pytest.fixture(scope="module")
async def contract_stack(topics: str, new_database, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the module (the function-scoped `stack` fixture would start four per test)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    dsns = {service: await new_database() for service in ("leads", "sales", "metrics")}
    running = Stack(topics, dsns, prefix, tmp_path_factory.mktemp("contract") / "logs")
    try:
        running.start_all()
        yield running
    finally:
        running.stop_all()
        await delete_topics(topics, prefix)


@pytest.mark.parametrize("service", SERVICES)
def test_service_answers_as_its_openapi_document_says(contract_stack: Stack, service: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        # Explicit: the run's working directory is tmp_path (below), not the repository.
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{contract_stack.url(service)}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {CREDENTIALS[service]}",
        # Throwaway test credentials: printed as they are, the curl lines reproduce as-is.
        "--output-sanitize",
        "false",
        # Absolute: the working directory is tmp_path. Failing examples are replayed next run.
        "--generation-database",
        str(ROOT / ".hypothesis" / "schemathesis"),
    ]
    started = time.monotonic()
    # In tmp_path: Schemathesis keeps its cache (.schemathesis/) and reports in the working
    # directory, which must not be the shared work tree.
    env = os.environ | {"SCHEMATHESIS_HOOKS": str(HOOKS), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    # A failure's output is in the assertion message; a passing run's shows here (with -s).
    shown = output if result.returncode == 0 else ""
    print(f"\n$ {' '.join(command)}\n{shown}{service}: schemathesis took {elapsed:.1f}s")
    assert result.returncode == 0, (
        f"schemathesis found {service}'s API disagreeing with its OpenAPI document "
        f"(exit {result.returncode}, {elapsed:.1f}s):\n{output}\n"
        f"service log: {contract_stack.log_dir / service}.log"
    )
