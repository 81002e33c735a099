"""Render deploy/k8s with kustomize and check every object against its schema, offline.

    python deploy/k8s/validate.py        # prints one line per object, exits 1 on any error

No cluster is needed. The schemas come from:

- Kubernetes kinds: the strict JSON schemas that kubernetes-validate (PyPI) generates from
  the official OpenAPI documents, for each Kubernetes version in KUBERNETES_VERSIONS.
- CloudNativePG and KEDA: each operator's own CRD, as shipped in its Go module (fetched
  with `go mod download` into the Go module cache), made strict like kubeconform's
  openapi2jsonschema does: an object that lists its properties accepts no others.
  A Kafka trigger's `metadata` is a free map in the CRD; its keys, which are required, their
  enums and integer types are read from KEDA's Kafka scaler in the same module.
- Strimzi: its CRDs are on no package registry reachable from CI, so schemas/ holds
  strict schemas of the fields these manifests use, written from Strimzi's API reference.

Strict means an unknown field fails, as `kubectl apply --validate=strict` would.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"

# The oldest and the newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
# Operators whose CRDs are read from their Go modules: API group -> (module, version, CRD folder).
CRD_MODULES = {
    "postgresql.cnpg.io": ("github.com/cloudnative-pg/cloudnative-pg", "v1.28.0", "config/crd/bases"),
    "keda.sh": ("github.com/kedacore/keda/v2", "v2.20.2", "config/crd/bases"),
}
STRIMZI_VERSION = "1.2.0"  # the operator release the schemas in schemas/kafka.strimzi.io describe

Doc = dict[str, Any]
# The CRDs are large (CloudNativePG's Cluster is 0.4 MB): libyaml's parser when there is one.
YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Problem:
    kind: str
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.message}"


def render(path: Path = HERE) -> list[Doc]:
    """`kubectl kustomize` (kustomize built into kubectl) of a kustomization folder."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: it renders the kustomization")
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _go() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise RuntimeError("go not found: it fetches the operators' CRDs from the Go module proxy")
    return go


@functools.cache
def module_dir(module: str, version: str) -> Path:
    """The module's files in the Go module cache; downloaded once, then read from there."""
    result = subprocess.run(
        [_go(), "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        cwd=HERE,  # no go.mod here: module mode without a main module
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
    )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module}@{version} failed: {info.get('Error') or result.stderr}")
    return Path(info["Dir"])


def strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a strict JSON schema.

    An object with `properties` and no `additionalProperties` rejects other fields, unless it
    says x-kubernetes-preserve-unknown-fields; `nullable` also allows null."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def crd_schemas(group: str) -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> strict schema, for every CRD of an operator module."""
    module, version, folder = CRD_MODULES[group]
    schemas = {}
    for path in sorted((module_dir(module, version) / folder).glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=YamlLoader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for served in spec["versions"]:
                if served.get("served"):
                    api_version = f"{spec['group']}/{served['name']}"
                    schemas[(api_version, spec["names"]["kind"])] = strict(served["schema"]["openAPIV3Schema"])
    return schemas


@functools.cache
def local_schemas() -> dict[tuple[str, str], Any]:
    """The schemas kept in schemas/<group>/<kind>_<version>.json (Strimzi's)."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*/*.json")):
        schema = json.loads(path.read_text())
        schemas[(schema["x-api-version"], schema["x-kind"])] = schema
    return schemas


KEDA_FIELD = re.compile(r'^\s*\w+\s+(\[\]string|string|int64|int|bool|\w+)\s+`keda:"([^"]*)"`', re.M)


@functools.cache
def kafka_trigger_parameters() -> dict[str, dict[str, Any]]:
    """The trigger metadata KEDA's Kafka scaler reads (its `keda:"name=…"` struct tags)."""
    module, version, _ = CRD_MODULES["keda.sh"]
    source = (module_dir(module, version) / "pkg/scalers/kafka_scaler.go").read_text()
    parameters = {}
    for go_type, tag in KEDA_FIELD.findall(source):
        options = dict(part.partition("=")[::2] for part in tag.split(","))
        if "triggerMetadata" not in options.get("order", "").split(";"):
            continue
        parameters[options["name"]] = {
            "required": "optional" not in options and "default" not in options,
            "enum": options["enum"].split(";") if options.get("enum") else None,
            "integer": go_type in ("int", "int64"),
        }
    return parameters


def kafka_trigger_problems(doc: Doc) -> Iterator[str]:
    parameters = kafka_trigger_parameters()
    for i, trigger in enumerate(doc.get("spec", {}).get("triggers", [])):
        if trigger.get("type") != "kafka":
            continue
        metadata = trigger.get("metadata", {})
        where = f"spec.triggers.{i}.metadata"
        for key, value in metadata.items():
            known = parameters.get(key)
            if known is None:
                yield f"{where}: {key!r} is not a parameter of KEDA's Kafka scaler"
            elif known["enum"] and value not in known["enum"]:
                yield f"{where}.{key}: {value!r} is not one of {known['enum']}"
            elif known["integer"] and not str(value).lstrip("-").isdigit():
                yield f"{where}.{key}: {value!r} is not an integer"
        for key, known in parameters.items():
            if known["required"] and key not in metadata:
                yield f"{where}: {key!r} is required by KEDA's Kafka scaler"


def schema_for(doc: Doc) -> Any | None:
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    group = group_of(key[0])
    if group in CRD_MODULES:
        return crd_schemas(group).get(key)
    return local_schemas().get(key)


def _messages(errors: Iterable[jsonschema.ValidationError]) -> Iterator[str]:
    for error in sorted(errors, key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(top)"
        yield f"{where}: {error.message}"


@functools.cache
def core_validator(version: str, api_version: str, kind: str) -> jsonschema.Validator | None:
    """kubernetes-validate's strict schema of a Kubernetes kind, as its own `validate` loads it,
    in a validator that reports every error rather than the first."""
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    name = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1, v1 -> v1
    try:
        schema = schema_contents(f"{folder}/{kind.lower()}-{name}.json", version)
    except FileNotFoundError:
        return None
    definitions = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", version))
    registry = definitions @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: Doc) -> list[Problem]:
    """Every problem with one object; an object whose kind has no schema is a problem too."""
    kind, name = doc.get("kind", "?"), doc.get("metadata", {}).get("name", "?")
    api_version = doc.get("apiVersion", "")
    schema = schema_for(doc)
    if schema is not None:
        validator = jsonschema.Draft4Validator(schema)  # OpenAPI 3.0 schemas follow draft 4's rules
        problems = [Problem(kind, name, m) for m in _messages(validator.iter_errors(doc))]
        if (api_version, kind) == ("keda.sh/v1alpha1", "ScaledObject"):
            problems += [Problem(kind, name, m) for m in kafka_trigger_problems(doc)]
        return problems
    problems = []
    for version in KUBERNETES_VERSIONS:
        core = core_validator(version, api_version, kind)
        if core is None:
            problems.append(Problem(kind, name, f"no schema for {api_version} {kind} (Kubernetes {version})"))
            continue
        problems += [Problem(kind, name, f"Kubernetes {version}: {m}") for m in _messages(core.iter_errors(doc))]
    return problems


def validate_all(docs: Iterable[Doc]) -> list[Problem]:
    return [problem for doc in docs for problem in validate(doc)]


def main() -> int:
    docs = render()
    problems = validate_all(docs)
    for doc in docs:
        print(f"checked {doc['apiVersion']} {doc['kind']}/{doc['metadata']['name']}")
    for problem in problems:
        print(f"INVALID {problem}", file=sys.stderr)
    print(f"{len(docs)} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
