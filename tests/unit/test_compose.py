"""docker-compose.yml checked against the code without running it (tests/e2e/test_docker_compose.py
runs it): the services, their ports, every EMBUDO_* variable it sets is a real setting, and
what users may change from the environment (published ports, images) defaults to what it was."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PORTS = {"ingest": 8001, "leads": 8002, "sales": 8003, "metrics": 8004}
# Read by the Dockerfile's command, not by the settings.
IMAGE_VARIABLES = {"EMBUDO_SERVICE", "PORT"}
# "127.0.0.1:${EMBUDO_INGEST_HOST_PORT:-8001}:8001": localhost only, the host port movable.
PUBLISHED = re.compile(r"^127\.0\.0\.1:\$\{(EMBUDO_[A-Z]+_HOST_PORT):-(\d+)\}:(\d+)$")


def published(service: str) -> list[tuple[str, int, int]]:
    """(variable, default host port, container port) of each published port."""
    ports = []
    for entry in COMPOSE["services"][service].get("ports", []):
        match = PUBLISHED.match(entry)
        assert match, f"{service}: {entry!r} should look like 127.0.0.1:${{EMBUDO_<NAME>_HOST_PORT:-<port>}}:<port>"
        ports.append((match[1], int(match[2]), int(match[3])))
    return ports


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{service}.settings")
    classes = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, ServiceSettings) and c is not ServiceSettings
    ]
    assert len(classes) == 1, f"services.{service}.settings should define one settings class"
    return classes[0]


@pytest.mark.parametrize("service", PORTS)
def test_each_service_is_built_and_published_on_its_port(service):
    spec = COMPOSE["services"][service]
    assert spec["build"]["dockerfile"] == "deploy/Dockerfile"
    assert spec["environment"]["EMBUDO_SERVICE"] == service
    assert spec["environment"]["PORT"] == str(PORTS[service])
    assert published(service) == [(f"EMBUDO_{service.upper()}_HOST_PORT", PORTS[service], PORTS[service])]
    assert spec["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", PORTS)
def test_every_variable_is_a_setting_of_the_service(service):
    fields = set(settings_class(service).model_fields)
    for name in COMPOSE["services"][service]["environment"]:
        if name in IMAGE_VARIABLES:
            continue
        assert name.startswith("EMBUDO_"), name
        assert name.removeprefix("EMBUDO_").lower() in fields, f"{service}: {name} is not a setting"


@pytest.mark.parametrize("service", ["leads", "sales", "metrics"])
def test_stateful_services_wait_for_postgres_and_use_their_own_database(service):
    spec = COMPOSE["services"][service]
    assert spec["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert spec["environment"]["EMBUDO_DATABASE_URL"].endswith(f"/embudo_{service}")
    init = (ROOT / "deploy/postgres-init/01-databases.sql").read_text()
    assert f"CREATE DATABASE embudo_{service}" in init


def test_infrastructure_has_healthchecks_and_the_broker_does_not_auto_create_topics():
    kafka, postgres = COMPOSE["services"]["kafka"], COMPOSE["services"]["postgres"]
    assert kafka["healthcheck"]["test"] and postgres["healthcheck"]["test"]
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert re.fullmatch(r"\$\{KAFKA_IMAGE:-apache/kafka:4\.[0-9.]+\}", kafka["image"])
    assert postgres["image"] == "${POSTGRES_IMAGE:-postgres:16}"


@pytest.mark.parametrize(("service", "port"), [("kafka", 9092), ("postgres", 5432)])
def test_the_broker_and_the_database_publish_their_usual_port_on_localhost(service, port):
    assert published(service) == [(f"EMBUDO_{service.upper()}_HOST_PORT", port, port)]


def test_the_broker_is_healthy_when_it_answers_on_the_services_listener():
    check = " ".join(COMPOSE["services"]["kafka"]["healthcheck"]["test"])
    assert "kafka-broker-api-versions.sh --bootstrap-server localhost:19092" in check
    assert "INTERNAL://kafka:19092" in COMPOSE["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_the_host_reaches_the_broker_at_the_port_it_is_published_on():
    advertised = COMPOSE["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    listeners = dict(listener.split("://") for listener in advertised.split(","))
    assert listeners["EXTERNAL"] == "127.0.0.1:${EMBUDO_KAFKA_HOST_PORT:-9092}"


def test_the_services_image_is_built_from_a_configurable_python_image_by_default_the_official_one():
    assert COMPOSE["x-service"]["build"]["args"] == ["EMBUDO_PYTHON_IMAGE"]
    dockerfile = (ROOT / "deploy/Dockerfile").read_text().splitlines()
    assert "ARG EMBUDO_PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert [line for line in dockerfile if line.startswith("FROM ")] == ["FROM ${EMBUDO_PYTHON_IMAGE}"]


def test_the_stand_in_images_never_carry_the_official_names():
    """tests/conftest.py uses testcontainers when the engine has the official images."""
    from tests import conftest

    script = (ROOT / "deploy/docker/docker.sh").read_text()
    names = dict(re.findall(r"^(PYTHON_IMAGE|POSTGRES_IMAGE|KAFKA_IMAGE)=\"?([^\s\"]+)", script, re.MULTILINE))
    assert set(names) == {"PYTHON_IMAGE", "POSTGRES_IMAGE", "KAFKA_IMAGE"}
    for name in names.values():
        assert name.startswith("embudo-standin/")
        assert name not in {conftest.KAFKA_IMAGE, conftest.POSTGRES_IMAGE}


def test_make_dev_uses_the_same_ports_as_compose():
    script = (ROOT / "deploy/local/services.sh").read_text()
    for service, port in PORTS.items():
        assert f"{service}:{port}" in script


@pytest.mark.parametrize(
    ("service", "data_dir"),
    [
        ("kafka", COMPOSE["services"]["kafka"]["environment"].get("KAFKA_LOG_DIRS")),
        ("postgres", "/var/lib/postgresql/data"),
    ],
)
def test_the_broker_and_the_database_keep_their_data_on_a_volume(service, data_dir):
    volumes = [v.split(":") for v in COMPOSE["services"][service]["volumes"]]
    assert any(source in COMPOSE["volumes"] and target == data_dir for source, target, *_ in volumes)
