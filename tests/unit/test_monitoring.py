"""deploy/monitoring against the code: the Grafana dashboard and the alert rules may only use
metric names and labels that the services really export (read from their prometheus_client
definitions), on the jobs that the Prometheus configs scrape."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "embudo.json").read_text())
ALERTS = yaml.safe_load((MONITORING / "alerts.yml").read_text())
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
PORTS = {"ingest": 8001, "leads": 8002, "sales": 8003, "metrics": 8004}
# Labels Prometheus adds to every scraped sample (prometheus-kubernetes.yml adds pod too).
TARGET_LABELS = {"job", "instance", "pod"}
PROMETHEUS_SERIES = {"up": set()}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the code's Counter/Gauge/Histogram/Summary definitions expose, with
    its labels, as prometheus_client names them (a Counter gains _total, a Histogram _bucket…)."""
    series: dict[str, set[str]] = {}
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            kind = node.func.id
            if kind not in {"Counter", "Gauge", "Histogram", "Summary"} or not node.args:
                continue
            if not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            name = node.args[0].value
            label_node = node.args[2] if len(node.args) > 2 else None
            label_node = next((k.value for k in node.keywords if k.arg == "labelnames"), label_node)
            labels = {e.value for e in label_node.elts} if isinstance(label_node, ast.List | ast.Tuple) else set()
            if kind == "Counter":
                base = name.removesuffix("_total")
                series |= {f"{base}_total": labels, f"{base}_created": labels}
            elif kind == "Gauge":
                series[name] = labels
            else:
                series |= {f"{name}_sum": labels, f"{name}_count": labels, f"{name}_created": labels}
                if kind == "Histogram":
                    series[f"{name}_bucket"] = labels | {"le"}
    return series


EXPORTED = exported_metrics()


@dataclass
class Uses:
    metrics: set[str]
    labels: set[str]  # in matchers and in by/without/on/ignoring
    kept: set[str] | None  # the labels its result has, when an aggregation decides them


def parse_promql(expr: str) -> Uses:
    """The series names and labels a PromQL expression uses. Not a PromQL parser: enough for
    the expressions here (selectors, functions, aggregations with by, binary operators)."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
    labels: set[str] = set()
    groupings = [set(map(str.strip, c.split(","))) - {""} for c in re.findall(r"\bby\s*\(([^)]*)\)", expr)]
    kept = set.intersection(*groupings) if groupings else None
    if kept is None and re.search(r"\b(sum|min|max|avg|count)\s*\(", expr):
        kept = set()  # aggregated without by: no labels left
    if kept is not None and "histogram_quantile" in expr:
        kept -= {"le"}
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = {
        m.group(1)
        for m in re.finditer(r"([a-zA-Z_:][\w:]*)(\s*\()?", expr)
        if not m.group(2) and m.group(1) not in PROMQL_WORDS and not re.fullmatch(r"\d\w*", m.group(1))
    }
    return Uses(names, labels, kept)


def check_expression(expr: str, legend: str = "") -> list[str]:
    """What is wrong with one expression: unknown series, labels none of its series has."""
    uses = parse_promql(expr)
    known = {**EXPORTED, **PROMETHEUS_SERIES}
    problems = [f"{name} is not a metric the code exports" for name in sorted(uses.metrics - set(known))]
    if not uses.metrics:
        problems.append(f"no metric in {expr!r}")
    available = set().union(*(known.get(m, set()) for m in uses.metrics)) | TARGET_LABELS
    problems += [f"label {label} is on none of {sorted(uses.metrics)}" for label in sorted(uses.labels - available)]
    shown = set(re.findall(r"\{\{\s*\$?(?:labels\.)?(\w+)\s*\}\}", legend)) - {"value"}  # an alert's $value
    result = available if uses.kept is None else uses.kept
    problems += [f"the legend shows {label}, which its result does not have" for label in sorted(shown - result)]
    return problems


def dashboard_panels() -> list[dict]:
    found = []
    for panel in DASHBOARD["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def queries() -> list[tuple[str, str, str]]:
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


# --- the checker itself --------------------------------------------------------------------


def test_the_code_exports_the_metrics_the_dashboard_is_about():
    assert EXPORTED["embudo_http_requests_total"] == {"method", "route", "status"}
    assert EXPORTED["embudo_http_request_seconds_bucket"] == {"route", "le"}
    assert EXPORTED["embudo_consumer_lag"] == {"group", "topic", "partition"}
    assert {"embudo_events_dead_lettered_total", "embudo_outbox_oldest_age_seconds"} <= set(EXPORTED)


@pytest.mark.parametrize(
    ("expr", "legend", "says"),
    [
        ("sum(rate(embudo_http_request_total[5m]))", "", "embudo_http_request_total is not a metric"),
        ("sum by (grup) (embudo_consumer_lag)", "", "label grup"),
        ('embudo_outbox_backlog{group="leads"}', "", "label group"),
        ("sum by (group) (embudo_consumer_lag)", "{{topic}}", "the legend shows topic"),
        ("sum(embudo_consumer_lag)", "{{group}}", "the legend shows group"),
        ("embudo_outbox_backlog", "{{group}}", "the legend shows group"),
        ("histogram_quantile(0.9, rate(embudo_http_request_seconds[5m]))", "", "embudo_http_request_seconds is"),
    ],
)
def test_the_check_catches_a_wrong_name_or_label(expr, legend, says):
    problems = check_expression(expr, legend)
    assert any(says in p for p in problems), problems


def test_the_check_passes_a_correct_expression():
    expr = 'histogram_quantile(0.95, sum by (le) (rate(embudo_http_request_seconds_bucket{job="ingest"}[5m])))'
    assert check_expression(expr, "p95") == []
    assert parse_promql(expr).metrics == {"embudo_http_request_seconds_bucket"}


# --- the dashboard -------------------------------------------------------------------------


def test_the_dashboard_uses_only_metrics_and_labels_the_code_exports():
    assert len(queries()) >= 15
    problems = [f"{title}: {p}" for title, expr, legend in queries() for p in check_expression(expr, legend)]
    assert problems == []


def test_the_dashboard_shows_ingest_rate_lag_dlq_outbox_and_the_funnel():
    used = set().union(*(parse_promql(expr).metrics for _, expr, _ in queries()))
    assert {
        "embudo_http_requests_total",
        "embudo_consumer_lag",
        "embudo_events_dead_lettered_total",
        "embudo_outbox_backlog",
        "embudo_outbox_oldest_age_seconds",
        "embudo_events_processed_total",
    } <= used
    funnel = [expr for _, expr, _ in queries() if "embudo_events_processed_total{" in expr and "type=" in expr]
    types = {re.search(r'type="([^"]+)"', expr).group(1) for expr in funnel}
    assert {"lead.created", "deal.won"} <= types
    # The KPIs themselves are the metrics service's: linked, not recomputed.
    assert any(link["url"] == "${metrics_url}" for link in DASHBOARD["links"])


def test_the_dashboard_is_well_formed_for_grafana_provisioning():
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert DASHBOARD["uid"] and DASHBOARD["title"] and isinstance(DASHBOARD["schemaVersion"], int)
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel.get("targets"):
            assert panel["datasource"] == {"type": source["type"], "uid": source["uid"]}, panel["title"]
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    used = set(re.findall(r"\$\{(\w+)\}", json.dumps(DASHBOARD))) - {"__rate_interval", "__range"}
    assert used <= variables
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/embudo.yml").read_text())
    (dashboards,) = provider["providers"]
    assert dashboards["type"] == "file" and dashboards["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_dashboard_selects_jobs_that_prometheus_scrapes():
    jobs = {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    for _, expr, _ in queries():
        for selected in re.findall(r'job=~?"([^"]+)"', expr):
            assert set(selected.split("|")) <= jobs, expr


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_scrapes_each_service_on_its_compose_name_and_port():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    assert set(jobs) == set(PORTS)
    for service, port in PORTS.items():
        (static,) = jobs[service]["static_configs"]
        assert static["targets"] == [f"{service}:{port}"]
        assert service in compose
        assert jobs[service].get("metrics_path", "/metrics") == "/metrics"


def test_the_kubernetes_config_names_jobs_after_the_pods_label():
    config = yaml.safe_load((MONITORING / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    relabel = {r.get("target_label"): r for r in job["relabel_configs"]}
    assert relabel["job"]["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    manifests = (ROOT / "deploy/k8s/services").glob("*.yaml")
    for manifest in manifests:
        deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["metadata"]
        assert pod["labels"]["app.kubernetes.io/name"] in PORTS
        assert pod["annotations"]["prometheus.io/scrape"] == "true"


def test_the_alerts_use_only_metrics_and_labels_the_code_exports():
    rules = [rule for group in ALERTS["groups"] for rule in group["rules"]]
    expected = {"EmbudoConsumerLagGrowing", "EmbudoMessagesDeadLettered", "EmbudoOutboxStuck"}
    assert {r["alert"] for r in rules} >= expected
    problems = [
        f"{rule['alert']}: {p}"
        for rule in rules
        for p in check_expression(rule["expr"], " ".join(rule.get("annotations", {}).values()))
    ]
    assert problems == []
    for config in (PROMETHEUS, yaml.safe_load((MONITORING / "prometheus-kubernetes.yml").read_text())):
        assert config["rule_files"] == ["alerts.yml"]
