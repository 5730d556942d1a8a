"""Configuration: env helpers and the system checks that guard production."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from orchestrator_site.env import env_bool, env_float, env_int, env_list, env_str


def ids(deploy: bool = False) -> set[str]:
    return {message.id for message in run_checks(include_deployment_checks=deploy)}


def test_env_helpers_parse_and_reject(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("B", "yes")
    monkeypatch.setenv("I", "12")
    monkeypatch.setenv("F", "0.5")
    monkeypatch.setenv("L", "a, b,,c")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("S_FILE", str(secret))
    assert env_bool("B", False) and env_int("I", 0) == 12 and env_float("F", 0) == 0.5
    assert env_list("L") == ["a", "b", "c"]
    assert env_str("S") == "s3cret"
    assert env_int("MISSING", 7) == 7
    monkeypatch.setenv("I", "twelve")
    with pytest.raises(ImproperlyConfigured, match="I="):
        env_int("I", 0)
    monkeypatch.setenv("B", "perhaps")
    with pytest.raises(ImproperlyConfigured, match="B="):
        env_bool("B", False)


def test_the_dev_configuration_passes_the_checks(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = True  # pytest-django turns it off
    assert not {i for i in ids() if i.startswith("inference.E")}


def test_deploy_checks_refuse_the_dev_key_and_open_hosts(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = ["*"]
    assert {"inference.E001", "inference.E002"} <= ids(deploy=True)


def test_debug_off_with_the_dev_key_fails_even_without_deploy_and_only_once(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = False
    assert "inference.E003" in ids() and "inference.E001" not in ids(deploy=True)


def run_check(**environ: str):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from harness.processes import ROOT

    env = {**os.environ, **environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_every_malformed_variable_is_reported_at_once_without_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    checked = run_check(
        ORCHESTRATOR_DATA_DIR=str(tmp_path),
        DEBUG="perhaps",
        SECURE_HSTS_SECONDS="a year",
        SECRET_KEY_FILE=str(tmp_path / "missing"),
    )
    assert checked.returncode != 0 and "Traceback" not in checked.stderr
    for problem in (
        "DEBUG='perhaps' is not a boolean",
        "SECURE_HSTS_SECONDS='a year' is not an integer",
        "SECRET_KEY_FILE=",
    ):
        assert problem in checked.stderr, problem


def test_an_empty_secret_key_is_the_friendly_check_not_a_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    checked = run_check(ORCHESTRATOR_DATA_DIR=str(tmp_path), DEBUG="false", SECRET_KEY="")
    assert checked.returncode != 0 and "Traceback" not in checked.stderr
    assert "SECRET_KEY is unset, empty or the development key" in checked.stderr


def test_an_unknown_default_backend_is_an_error(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_DEFAULT_BACKEND = "nope"
    assert "inference.E010" in ids()


def test_an_unimportable_backend_class_is_an_error(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKENDS = {
        **settings.ORCHESTRATOR_BACKENDS,
        "ghost": {"class": "pipeline.backends.ghost.Ghost"},
    }
    assert "inference.E011" in ids()


def test_a_bad_worker_mode_is_an_error(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_WORKER_MODE = "sometimes"
    assert "inference.E013" in ids()
