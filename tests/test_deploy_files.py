"""deploy/: the Prometheus config, alert rules and Grafana dashboard are valid and
only name metrics this code exports (promtool is not on this machine class; this
checks the structure and every metric name instead)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import inference.metrics_http  # noqa: F401  (registers the queue depth family's module)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\b(orchestrator_[a-z_]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_info")


def exported() -> set[str]:
    names = {"orchestrator_queue_depth"}  # collected per scrape in the web process
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    dashboard = json.loads((DEPLOY / "grafana" / "orchestrator-dashboard.json").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def test_the_scrape_config_covers_web_and_workers() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"orchestrator-web", "orchestrator-workers"}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    assert config["rule_files"] == ["alerts.yml"]


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "OrchestratorHighErrorRate",
        "OrchestratorSlowRequests",
        "OrchestratorQueueBacklog",
        "OrchestratorNoWorker",
        "OrchestratorLeaseReclaims",
    } <= set(alerts)
    for rule in alerts.values():
        assert rule["expr"].count("(") == rule["expr"].count(")")
        assert rule["annotations"]["summary"]


@pytest.mark.parametrize("expr", expressions())
def test_every_expression_names_only_exported_metrics(expr: str) -> None:
    names = exported()
    used = METRIC.findall(expr)
    assert used or "up{" in expr
    for name in used:
        assert name in names or base(name) in {base(n) for n in names}, name
    assert expr.count("(") == expr.count(")")
