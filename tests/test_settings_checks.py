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
    settings.ALLOWED_HOSTS = ["*"]
    assert {"inference.E001", "inference.E002"} <= ids(deploy=True)


def test_debug_off_with_the_dev_key_fails_even_without_deploy(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = False
    assert "inference.E003" in ids()


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
