"""Production settings: `manage.py check --deploy` reports nothing under the
documented production environment (deploy/production.env.example), and the
settings it turns on are the ones running behind a TLS proxy needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.processes import ROOT

EXAMPLE = ROOT / "deploy" / "production.env.example"


def production_env(path: Path = EXAMPLE) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    env = {name.strip(): value.strip() for name, value in pairs}
    env["SECRET_KEY"] = "k" * 20 + "-production-secret-with-enough-entropy-0123456789"
    return env


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the variables under test: nothing from the developer's shell leaks in.
    clean = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_the_production_settings() -> None:
    result = check_deploy(production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_names_every_unsafe_default() -> None:
    """Plain DEBUG=false without the rest: each gap is reported by its id."""
    result = check_deploy({"DEBUG": "false", "ORCHESTRATOR_AUTH_REQUIRED": "false"})
    assert result.returncode != 0
    for issue in ("inference.E003", "inference.E002", "inference.E004", "security.W004"):
        assert issue in result.stderr, issue


def test_production_settings_secure_the_cookies_and_trust_the_proxy() -> None:
    code = (
        "from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER, "
        "s.ORCHESTRATOR_AUTH_REQUIRED, s.CORS_ALLOW_ALL_ORIGINS, s.ADMIN_URL)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
        cwd=ROOT,
        env={**os.environ, **production_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    expected = "True True ('HTTP_X_FORWARDED_PROTO', 'https') True False staff-7f3a/"
    assert result.stdout.strip() == expected


def test_a_pods_own_ip_joins_the_allowed_hosts() -> None:
    """Prometheus scrapes Kubernetes pods by address: that Host must pass Django."""
    code = "from django.conf import settings as s; print(s.ALLOWED_HOSTS)"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", code],
        cwd=ROOT,
        env={**os.environ, **production_env(), "POD_IP": "10.244.1.7"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "['orchestrator.example.com', '10.244.1.7']"
