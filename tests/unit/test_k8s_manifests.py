"""deploy/k8s can't be applied here (no cluster), so render it with kustomize, check every
object against its schema (deploy/k8s/validate.py) and check it against the code: the
topics of shared/topics.py, the consumer groups and what they consume, the settings, the
health routes."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, CONSUMER_GROUPS, Topic, topic_configs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# deploy/k8s/validate.py is a script, not in a package.
_spec = importlib.util.spec_from_file_location("deploy_k8s_validate", K8S / "validate.py")
validate = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate)

PORTS = {"ingest": 8001, "leads": 8002, "sales": 8003, "metrics": 8004}
REPLICATION_FACTOR = 3


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return validate.render(K8S)


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict], kind: str) -> dict:
    (found,) = objects(docs, kind).values()
    return found


def consumed_topics(service: str) -> list[Topic]:
    """The `consumes=[...]` of the service's ServiceSpec, read from its main.py."""
    import shared.topics

    tree = ast.parse((ROOT / "services" / service / "main.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "consumes":
            return [getattr(shared.topics, element.id) for element in node.value.elts]
    return []


def settings_fields(service: str) -> set[str]:
    module = importlib.import_module(f"services.{service}.settings")
    (cls,) = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, ServiceSettings) and c is not ServiceSettings
    ]
    return set(cls.model_fields)


def container(deployment: dict) -> dict:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


def env_of(deployment: dict, docs: list[dict]) -> dict[str, object]:
    """Every variable the container gets: the ConfigMaps it loads, then its own env."""
    spec = container(deployment)
    env: dict[str, object] = {}
    maps = objects(docs, "ConfigMap")
    for source in spec.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for var in spec.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


# --- schemas -------------------------------------------------------------------------------


def test_every_object_matches_its_schema(docs):
    assert len(docs) > 20
    assert [str(p) for p in validate.validate_all(docs)] == []


def set_path(doc: dict, path: tuple, value: object) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def drop_path(doc: dict, path: tuple) -> None:
    for key in path[:-1]:
        doc = doc[key]
    del doc[path[-1]]


PROBE = ("spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet")
TRIGGER = ("spec", "triggers", 0, "metadata")
BROKEN = [
    # (kind, name, how it is broken, what the validator must say)
    ("Deployment", "leads", lambda d: set_path(d, (*PROBE, "pathh"), "/health/live"), "'pathh' was unexpected"),
    ("Deployment", "leads", lambda d: set_path(d, ("spec", "revisionHistoryLimit"), "five"), "is not of type"),
    ("Deployment", "leads", lambda d: drop_path(d, ("spec", "template", "spec", "containers", 0, "name")), "required"),
    ("PodDisruptionBudget", "sales", lambda d: set_path(d, ("spec", "minAvailble"), 1), "'minAvailble' was unexpected"),
    ("Cluster", "embudo-postgres", lambda d: set_path(d, ("spec", "instances"), "3"), "is not of type 'integer'"),
    ("Cluster", "embudo-postgres", lambda d: set_path(d, ("spec", "storage", "sise"), "1Gi"), "'sise' was unexpected"),
    ("Database", "embudo-sales", lambda d: drop_path(d, ("spec", "owner")), "'owner' is a required property"),
    ("ScaledObject", "leads", lambda d: drop_path(d, ("spec", "scaleTargetRef")), "'scaleTargetRef' is a required"),
    ("ScaledObject", "leads", lambda d: set_path(d, ("spec", "maxReplicaCount"), "6"), "is not of type 'integer'"),
    # A Kafka trigger's metadata, as KEDA's Kafka scaler reads it.
    ("ScaledObject", "sales", lambda d: set_path(d, (*TRIGGER, "lagThreshhold"), "10"), "not a parameter of KEDA"),
    ("ScaledObject", "sales", lambda d: set_path(d, (*TRIGGER, "offsetResetPolicy"), "earlist"), "is not one of"),
    ("ScaledObject", "sales", lambda d: set_path(d, (*TRIGGER, "lagThreshold"), "2k"), "is not an integer"),
    ("ScaledObject", "sales", lambda d: drop_path(d, (*TRIGGER, "consumerGroup")), "'consumerGroup' is required"),
    ("Kafka", "embudo", lambda d: set_path(d, ("spec", "kafka", "replicas"), 3), "'replicas' was unexpected"),
    ("Kafka", "embudo", lambda d: drop_path(d, ("spec", "kafka", "listeners")), "'listeners' is a required"),
    ("KafkaNodePool", "dual-role", lambda d: set_path(d, ("spec", "roles"), ["brokers"]), "is not one of"),
    ("KafkaTopic", "embudo-leads-dlq-v1", lambda d: set_path(d, ("spec", "partitions"), "1"), "is not of type"),
]


@pytest.mark.parametrize(("kind", "name", "breaks", "says"), BROKEN, ids=[f"{b[0]}-{b[3]}" for b in BROKEN])
def test_the_validator_rejects_a_broken_copy(docs, kind, name, breaks, says):
    broken = copy.deepcopy(objects(docs, kind)[name])
    assert validate.validate(broken) == []
    breaks(broken)
    problems = [str(p) for p in validate.validate(broken)]
    assert problems, f"{kind}/{name} broken and still valid"
    assert any(says in p for p in problems), problems


def test_a_broken_copy_of_the_folder_fails_as_a_whole(tmp_path):
    """The same path as the real check, from the files: a typo in one manifest is caught."""
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = folder / "services" / "sales.yaml"
    text = manifest.read_text()
    assert "containerPort:" in text
    manifest.write_text(text.replace("containerPort:", "containerPorts:", 1))
    problems = [str(p) for p in validate.validate_all(validate.render(folder))]
    assert any(p.startswith("Deployment/sales") and "'containerPorts' was unexpected" in p for p in problems)


def test_a_kind_without_a_schema_is_a_problem_not_a_pass():
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert validate.validate(unknown)


# --- Kafka ---------------------------------------------------------------------------------


def test_the_kafka_topics_are_those_of_shared_topics(docs):
    kafka = one(docs, "Kafka")
    topics = {t["spec"]["topicName"]: t for t in objects(docs, "KafkaTopic").values()}
    assert set(topics) == {t.name for t in ALL_TOPICS}
    for topic in ALL_TOPICS:
        spec = topics[topic.name]["spec"]
        assert spec["partitions"] == topic.partitions, topic.name
        assert spec["replicas"] == REPLICATION_FACTOR, topic.name
        assert {k: str(v) for k, v in spec["config"].items()} == topic_configs(REPLICATION_FACTOR), topic.name
        assert topics[topic.name]["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert topic_configs(REPLICATION_FACTOR) == {"retention.ms": "-1", "min.insync.replicas": "2"}


def test_three_brokers_replicate_every_write_to_two_before_acknowledging_it(docs):
    kafka = one(docs, "Kafka")
    brokers = [p for p in objects(docs, "KafkaNodePool").values() if "broker" in p["spec"]["roles"]]
    assert sum(p["spec"]["replicas"] for p in brokers) == 3
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"] for p in brokers)
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == config["offsets.topic.replication.factor"] == 3
    assert config["min.insync.replicas"] == config["transaction.state.log.min.isr"] == 2
    assert config["auto.create.topics.enable"] is False
    assert "topicOperator" in kafka["spec"]["entityOperator"]  # it is what creates the KafkaTopics


def test_the_services_reach_the_strimzi_bootstrap_service(docs):
    kafka = one(docs, "Kafka")
    (plain,) = [listener for listener in kafka["spec"]["kafka"]["listeners"] if not listener["tls"]]
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap:{plain['port']}"  # Strimzi's Service name
    for deployment in objects(docs, "Deployment").values():
        env = env_of(deployment, docs)
        assert env["EMBUDO_KAFKA_BOOTSTRAP_SERVERS"] == bootstrap
        assert env["EMBUDO_KAFKA_REPLICATION_FACTOR"] == str(REPLICATION_FACTOR)
    for scaled in objects(docs, "ScaledObject").values():
        assert {t["metadata"]["bootstrapServers"] for t in scaled["spec"]["triggers"]} == {bootstrap}


# --- KEDA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group", CONSUMER_GROUPS)
def test_each_consumer_scales_on_the_lag_of_its_own_topics_up_to_their_partitions(docs, group):
    scaled = objects(docs, "ScaledObject")[group]
    deployment = objects(docs, "Deployment")[group]
    consumed = consumed_topics(group)
    assert consumed, f"services/{group}/main.py consumes nothing?"
    assert "EMBUDO_CONSUMER_GROUP" not in env_of(deployment, docs)  # so the group is the service's name
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "kafka" and t["metadata"]["consumerGroup"] == group for t in triggers)
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(t.name for t in consumed)
    assert scaled["spec"]["maxReplicaCount"] == max(t.partitions for t in consumed)
    assert 2 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_only_the_consumers_scale_on_lag(docs):
    assert set(objects(docs, "ScaledObject")) == set(CONSUMER_GROUPS)
    assert set(objects(docs, "HorizontalPodAutoscaler")) == {"ingest"}
    assert consumed_topics("ingest") == []


# --- the services --------------------------------------------------------------------------


@pytest.mark.parametrize("service", PORTS)
def test_each_service_runs_its_app_with_probes_on_the_health_routes(docs, service):
    deployment = objects(docs, "Deployment")[service]
    spec = container(deployment)
    env = env_of(deployment, docs)
    assert env["EMBUDO_SERVICE"] == service and env["PORT"] == str(PORTS[service])  # read by deploy/Dockerfile
    (port,) = spec["ports"]
    assert port["containerPort"] == PORTS[service]
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": port["name"]}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port["name"]}
    assert spec["startupProbe"]["httpGet"]["path"].startswith("/health/")
    assert spec["resources"]["requests"]["cpu"] and spec["resources"]["requests"]["memory"]
    assert spec["resources"]["limits"]["memory"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORTS[service]) and annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("service", PORTS)
def test_each_service_has_a_service_a_disruption_budget_and_two_replicas_at_least(docs, service):
    deployment = objects(docs, "Deployment")[service]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: selector.items() <= labels.items()  # noqa: E731
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert selects(objects(docs, "Service")[service]["spec"]["selector"])
    assert objects(docs, "Service")[service]["spec"]["ports"][0]["port"] == PORTS[service]
    budget = objects(docs, "PodDisruptionBudget")[service]
    assert selects(budget["spec"]["selector"]["matchLabels"]) and budget["spec"]["minAvailable"] == 1
    # The autoscaler owns the count; one in the Deployment would be reset by every apply.
    assert "replicas" not in deployment["spec"]
    autoscaler = objects(docs, "ScaledObject").get(service) or objects(docs, "HorizontalPodAutoscaler")[service]
    minimum = autoscaler["spec"].get("minReplicaCount", autoscaler["spec"].get("minReplicas"))
    assert minimum >= 2 > budget["spec"]["minAvailable"]


@pytest.mark.parametrize("service", PORTS)
def test_every_embudo_variable_is_a_setting_of_the_service(docs, service):
    fields = settings_fields(service)
    for name in env_of(objects(docs, "Deployment")[service], docs):
        if name.startswith("EMBUDO_") and name != "EMBUDO_SERVICE":
            assert name.removeprefix("EMBUDO_").lower() in fields, f"{service}: {name} is not a setting"


@pytest.mark.parametrize("service", ["leads", "sales", "metrics"])
def test_stateful_services_use_their_own_database_on_the_cloudnativepg_primary(docs, service):
    cluster = one(docs, "Cluster")
    created = [d["spec"] for d in objects(docs, "Database").values()]
    databases = {cluster["spec"]["bootstrap"]["initdb"]["database"]} | {
        d["name"] for d in created if d["cluster"]["name"] == cluster["metadata"]["name"]
    }
    owner = cluster["spec"]["bootstrap"]["initdb"]["owner"]
    env = env_of(objects(docs, "Deployment")[service], docs)
    url = env["EMBUDO_DATABASE_URL"]
    assert url == f"postgresql://$(DB_USER):$(DB_PASSWORD)@{cluster['metadata']['name']}-rw:5432/embudo_{service}"
    assert f"embudo_{service}" in databases
    assert all(d["spec"]["owner"] == owner for d in objects(docs, "Database").values())
    # CloudNativePG's generated Secret for the owner; $(VAR) only expands variables defined before.
    names = [v["name"] for v in container(objects(docs, "Deployment")[service])["env"]]
    assert names.index("DB_USER") < names.index("EMBUDO_DATABASE_URL") > names.index("DB_PASSWORD")
    for var in ("DB_USER", "DB_PASSWORD"):
        assert env[var]["secretKeyRef"]["name"] == f"{cluster['metadata']['name']}-app"


def test_the_credentials_secret_is_documented_and_not_committed(docs):
    """embudo-credentials is created by hand; every key a Deployment reads is in the example."""
    assert "Secret" not in {d["kind"] for d in docs}
    example = (K8S / "credentials.example.env").read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in example if line and not line.startswith("#")}
    read = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for deployment in objects(docs, "Deployment").values()
        for var in container(deployment)["env"]
        if var.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "embudo-credentials"
    }
    assert read == keys == {"EMBUDO_API_TOKENS", "EMBUDO_WRITE_KEYS"}
    assert "credentials.env" in (K8S / ".gitignore").read_text().split()
