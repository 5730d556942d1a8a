"""compose.yaml, parsed: the services, their order and health, one image, and an
environment made only of documented keys (no engine here runs it)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from orchestrator_site.config import KEYS, OrchestratorConfig
from tests.deploy.rendered import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
APP = ("migrate", "web", "worker")


def test_the_services_of_a_scaled_stack_are_there() -> None:
    assert {"postgres", "redis", "migrate", "web", "worker"} <= set(SERVICES)
    assert {s for s, spec in SERVICES.items() if "monitoring" in spec.get("profiles", [])} == {
        "prometheus",
        "grafana",
    }


def test_web_and_workers_start_after_the_migration_and_healthy_services() -> None:
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert "ping" in SERVICES["redis"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_one_image_runs_every_app_service_and_workers_scale() -> None:
    assert len({SERVICES[name]["image"] for name in APP}) == 1
    assert SERVICES["migrate"]["command"] == ["migrate", "--noinput"]
    assert SERVICES["worker"]["command"][0] == "run_pipeline"
    assert "container_name" not in SERVICES["worker"] and "ports" not in SERVICES["worker"]


def seconds(duration: str) -> float:
    return float(re.fullmatch(r"(\d+)s", duration).group(1))  # type: ignore[union-attr]


def test_the_stop_grace_outlasts_the_apps_own_shutdown() -> None:
    grace = OrchestratorConfig().worker.shutdown_grace_seconds  # compose sets no other
    assert seconds(SERVICES["web"]["stop_grace_period"]) >= grace + 5
    assert seconds(SERVICES["worker"]["stop_grace_period"]) >= grace + 10


def documented_keys() -> set[str]:
    example = (ROOT / "deploy" / "production.env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))


@pytest.mark.parametrize("service", APP)
def test_every_environment_key_is_documented(service: str) -> None:
    settings_of_ours = {key.setting for key in KEYS.values()}
    for name in SERVICES[service]["environment"]:
        assert name in documented_keys() | settings_of_ours, name


def test_no_secret_value_is_written_into_the_file() -> None:
    environment = SERVICES["web"]["environment"]
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")  # the operator's, or no start
