"""docker-compose.yml can't run here (no Docker engine), so check it against the code:
the services, their ports, and that every EMBUDO_* variable it sets is a real setting."""

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
    assert f"{PORTS[service]}:{PORTS[service]}" in spec["ports"]
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
    assert re.match(r"apache/kafka:4\.", kafka["image"])


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
