"""The four services as real, separate processes (uvicorn), for end-to-end and fault tests.

Each stack gets its own topic namespace, its own databases and free ports, so it never
meets another test's events. Processes can be killed with SIGKILL and started again.
More replicas of a service are named `leads#2`, `leads#3`…: same database, same consumer
group, a port of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "leads", "sales", "metrics")
WRITE_KEY = "e2e-write-key"
API_TOKEN = "e2e-api-token"


def service_of(name: str) -> str:
    """'leads#2' -> 'leads'."""
    return name.partition("#")[0]


@dataclass
class Stack:
    kafka_bootstrap: str
    database_urls: dict[str, str]  # service -> DSN (leads, sales, metrics)
    topic_prefix: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=lambda: {s: free_port() for s in SERVICES})
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self, name: str) -> dict[str, str]:
        service = service_of(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBUDO_")}
        env.update(
            EMBUDO_ENV="test",
            EMBUDO_KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap,
            EMBUDO_TOPIC_PREFIX=self.topic_prefix,
            EMBUDO_WRITE_KEYS=WRITE_KEY,
            EMBUDO_API_TOKENS=API_TOKEN,
            EMBUDO_KAFKA_SEND_TIMEOUT_SECONDS="3",
        )
        if service in self.database_urls:
            env["EMBUDO_DATABASE_URL"] = self.database_urls[service]
        env.update(self.extra_env)
        return env

    def start(self, name: str, timeout: float = 60.0) -> None:
        """Start a service (or another replica of one: `leads#2`) and wait until it is ready."""
        service = service_of(name)
        self.ports.setdefault(name, free_port())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                f"services.{service}.main:build_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports[name]),
                "--no-access-log",
            ],
            cwd=ROOT,
            env=self.env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(name, timeout)

    def wait_ready(self, service: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[service].poll() is not None:
                raise RuntimeError(f"{service} exited: see {self.log_dir / service}.log")
            try:
                if httpx.get(f"{self.url(service)}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{service} not ready within {timeout}s: see {self.log_dir / service}.log")

    def start_all(self) -> None:
        for service in SERVICES:
            self.start(service)

    def kill(self, service: str) -> None:
        """kill -9: no shutdown hooks, no flushing, no leaving the consumer group."""
        process = self.processes.pop(service)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for service, process in list(self.processes.items()):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
            self.processes.pop(service)
