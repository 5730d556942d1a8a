"""The configuration schema: strict at every depth, one precedence with each
value's source, secrets kept out of the file, the example file and the README
table kept true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from django.conf import settings

from harness.processes import ROOT
from orchestrator_site import config
from orchestrator_site.config import load


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "orchestrator.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("concurency = 3\n", "concurency"),
        ("[limits]\nrequests_per_minut = 10\n", "limits.requests_per_minut"),
        (
            '[models.backends.x]\nclass = "a.B"\nfallbak = []\n',
            "models.backends.x.fallbak",
        ),
        ("[cache]\nttl = 5\n", "cache.ttl"),
        ("[metrics]\ntoken = 5\n", "metrics"),
    ],
    ids=["top-level", "in-a-table", "nested", "in-a-new-section", "unknown-table"],
)
def test_an_unknown_key_at_any_depth_is_an_error_naming_its_path(
    tmp_path: Path, text: str, path: str
) -> None:
    loaded = load(toml(tmp_path, text), environ={})
    assert any(error.startswith(f"{path}: Extra inputs") for error in loaded.errors), loaded.errors


def test_an_unknown_or_misspelt_variable_is_reported() -> None:
    environ = {"ORCHESTRATOR_CONCURENCY": "3", "ORCHESTRATOR_LIMITS__MAX_PENDIN": "1"}
    loaded = load("", environ={**environ, "ORCHESTRATOR_CONCURRENCY": "4"})
    assert loaded.unknown_env == sorted(environ)
    assert loaded.config.worker.concurrency == 4


def test_cross_field_rules_name_their_section() -> None:
    loaded = load("", environ={"ORCHESTRATOR_CACHE__TTL_SECONDS": "90000"})
    assert loaded.errors == ["cache: Value error, ttl_seconds is above max_ttl_seconds"]


def test_a_wrong_type_or_range_names_the_key() -> None:
    loaded = load("", environ={"ORCHESTRATOR_LIMITS__MAX_IN_FLIGHT": "-1"})
    assert loaded.errors == ["limits.max_in_flight: Input should be greater than or equal to 0"]


def test_each_layer_shadows_the_one_below_and_says_so(tmp_path: Path) -> None:
    secret = tmp_path / "pending"
    secret.write_text("40\n")
    file = toml(
        tmp_path, "[limits]\nmax_pending = 10\nmax_in_flight = 11\nrequests_per_minute = 12\n"
    )
    environ = {
        "ORCHESTRATOR_LIMITS__MAX_IN_FLIGHT": "20",  # nested name
        "ORCHESTRATOR_REQUESTS_PER_MINUTE": "30",  # flat alias
        "ORCHESTRATOR_MAX_PENDING": "21",
        "ORCHESTRATOR_MAX_PENDING_FILE": str(secret),
    }
    loaded = load(file, environ=environ, runtime={"limits.max_pending": 50})
    limits = loaded.config.limits
    assert (limits.max_pending, limits.max_in_flight, limits.requests_per_minute) == (50, 20, 30)
    sources = {row["key"]: row["source"] for row in loaded.report()}
    assert sources["limits.max_pending"] == "runtime"
    assert sources["limits.max_in_flight"] == "env"
    assert sources["limits.ws_max_readers"] == "default"
    without_runtime = load(file, environ=environ)
    assert without_runtime.config.limits.max_pending == 40
    assert {r["key"]: r["source"] for r in without_runtime.report()}["limits.max_pending"] == (
        "secret"
    )
    assert load(file, environ={}).config.limits.max_pending == 10


def test_the_nested_name_wins_over_the_flat_one() -> None:
    environ = {"ORCHESTRATOR_MAX_PENDING": "1", "ORCHESTRATOR_LIMITS__MAX_PENDING": "2"}
    assert load("", environ=environ).config.limits.max_pending == 2


def test_only_reloadable_keys_may_be_overridden_at_run_time() -> None:
    loaded = load("", environ={}, runtime={"worker.concurrency": 2})
    assert loaded.errors == ["worker.concurrency: not a key that may change at run time"]


def test_a_secret_in_the_file_is_an_error_and_is_redacted_when_shown(tmp_path: Path) -> None:
    loaded = load(toml(tmp_path, '[auth]\nmetrics_token = "s3cret"\n'), environ={})
    assert loaded.errors[0].startswith("auth.metrics_token: a secret may not be in the config")
    from_env = load("", environ={"ORCHESTRATOR_METRICS_TOKEN": "s3cret"})
    shown = {row["key"]: row["value"] for row in from_env.report()}
    assert shown["auth.metrics_token"] == "********"
    assert from_env.settings(debug=False, redis_url="")["ORCHESTRATOR_METRICS_TOKEN"] == "s3cret"


def test_lists_and_tables_come_from_the_environment_as_json_or_commas() -> None:
    environ = {
        "ORCHESTRATOR_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2",
        "ORCHESTRATOR_MODELS__BACKENDS": '{"e": {"class": "pipeline.backends.echo.EchoBackend"}}',
    }
    loaded = load("", environ=environ)
    assert loaded.config.connections.trusted_proxies == ["10.0.0.1", "10.0.0.2"]
    values = loaded.settings(debug=True, redis_url="")
    assert values["ORCHESTRATOR_BACKENDS"] == {
        "e": {
            "class": "pipeline.backends.echo.EchoBackend",
            "options": {},
            "fallback": [],
            "models": [],
            "context_tokens": None,
        }
    }


def test_the_old_top_level_keys_still_work_with_a_warning(tmp_path: Path) -> None:
    loaded = load(toml(tmp_path, 'concurrency = 3\nsystem_prompt = "Be terse."\n'), environ={})
    assert loaded.errors == []
    assert (loaded.config.worker.concurrency, loaded.config.pipeline.system_prompt) == (
        3,
        "Be terse.",
    )
    assert loaded.warnings[0].startswith("concurrency: a top-level key of the old layout")


def test_every_key_becomes_the_django_setting_it_names() -> None:
    values = settings.ORCHESTRATOR_CONFIGURATION.settings(debug=True, redis_url="")
    assert set(values) == {k.setting for k in config.KEYS.values()} | {"ORCHESTRATOR_FEATURES"}
    for name in values:
        assert hasattr(settings, name), name
    assert settings.ORCHESTRATOR_CONFIGURATION.config.requests.max_body_bytes == (
        settings.ORCHESTRATOR_MAX_BODY_BYTES
    )


def test_the_hash_follows_any_change() -> None:
    assert load("", environ={}).hash == load("", environ={}).hash
    assert load("", environ={}).hash != load("", environ={"ORCHESTRATOR_RAG_TOP_K": "4"}).hash


def test_the_example_file_validates_against_the_schema_and_the_model() -> None:
    import tomllib

    path = ROOT / "deploy" / "orchestrator.example.toml"
    jsonschema.validate(tomllib.loads(path.read_text()), config.json_schema())
    assert load(str(path), environ={}).errors == []


def test_the_readme_table_is_generated_from_the_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- config-table[^>]*-->\n(.*?)\n<!-- /config-table -->", readme, re.S)
    assert block is not None and block.group(1) == config.markdown_table()


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": "", "REDIS_URL": "", **env},
        capture_output=True,
        text=True,
    )


def test_manage_py_check_fails_naming_the_path(tmp_path: Path) -> None:
    broken = run_check({"ORCHESTRATOR_CONFIG": toml(tmp_path, "[limits]\nmax_pendng = 1\n")})
    assert broken.returncode != 0
    assert "orchestrator.E001" in broken.stderr and "limits.max_pendng" in broken.stderr
    typo = run_check({"DEBUG": "false", "SECRET_KEY": "x" * 50, "ORCHESTRATOR_CONCURENCY": "2"})
    assert typo.returncode != 0 and "ORCHESTRATOR_CONCURENCY" in typo.stderr
    assert run_check({}).returncode == 0


def test_manage_py_config_shows_values_and_sources(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "", "REDIS_URL": "", "ORCHESTRATOR_RAG_TOP_K": "5"}
    shown = subprocess.run(
        [sys.executable, "manage.py", "config", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["key"]: row for row in json.loads(shown.stdout)["keys"]}
    assert (rows["pipeline.rag_top_k"]["value"], rows["pipeline.rag_top_k"]["source"]) == (
        5,
        "env",
    )
