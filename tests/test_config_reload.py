"""Hot reload of the configuration and feature flags: in-process, then on a live
`serve` process following its file (and SIGHUP)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from channels.db import database_sync_to_async
from prometheus_client import REGISTRY

from harness.processes import embedded_env, serving, serving_process
from inference import flags
from inference.models import FeatureFlag
from orchestrator_site.config import load
from orchestrator_site.reload import Reloader
from pipeline.worker import Engine
from tests.conftest import asubmit, finished


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def config_file(tmp_path: Path, settings):  # type: ignore[no-untyped-def]
    path = tmp_path / "orchestrator.toml"
    path.write_text("[limits]\nmax_in_flight = 5\n")
    settings.ORCHESTRATOR_CONFIGURATION = load(str(path), environ={})
    settings.ORCHESTRATOR_MAX_IN_FLIGHT = 5
    return path


def rewrite(path: Path, text: str) -> None:
    """Replace the file by rename, as editors and Kubernetes do."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    fresh.replace(path)


def test_a_changed_reloadable_key_takes_effect(config_file: Path, settings) -> None:  # type: ignore[no-untyped-def]
    reloader = Reloader()
    rewrite(config_file, "[limits]\nmax_in_flight = 7\n[pipeline]\nsystem_prompt = 'Be brief.'\n")
    assert reloader.poll() == "ok"
    assert settings.ORCHESTRATOR_MAX_IN_FLIGHT == 7
    assert settings.ORCHESTRATOR_SYSTEM_PROMPT == "Be brief."
    shown = {row["key"]: row for row in settings.ORCHESTRATOR_CONFIGURATION.report()}
    assert (shown["limits.max_in_flight"]["value"], shown["limits.max_in_flight"]["source"]) == (
        7,
        "file",
    )
    assert reloader.poll() == "unchanged"


def test_a_broken_file_keeps_the_current_values_and_is_counted(config_file: Path, settings) -> None:  # type: ignore[no-untyped-def]
    reloader = Reloader()
    before = metric("orchestrator_config_reloads_total", result="invalid")
    for broken in ("[limits\nmax_in_flight = 9\n", "[limits]\nmax_in_flight = -9\n"):
        rewrite(config_file, broken)
        assert reloader.poll() == "invalid"
    assert settings.ORCHESTRATOR_MAX_IN_FLIGHT == 5
    assert metric("orchestrator_config_reloads_total", result="invalid") == before + 2


def test_a_restart_only_key_is_not_applied_and_raises_the_gauge(
    config_file: Path, settings
) -> None:  # type: ignore[no-untyped-def]
    reloader = Reloader()
    concurrency = settings.ORCHESTRATOR_CONCURRENCY
    rewrite(config_file, "[limits]\nmax_in_flight = 5\n[worker]\nconcurrency = 99\n")
    assert reloader.poll() == "ok"
    assert concurrency == settings.ORCHESTRATOR_CONCURRENCY
    assert metric("orchestrator_config_restart_required") == 1


# --- feature flags -------------------------------------------------------------------------


def test_percent_rollouts_are_stable_per_key_and_proportionate() -> None:
    state = flags.State(enabled=True, percent=30)
    keys = [f"key{i:04d}" for i in range(2000)]
    first = [flags.decide(state, "cache", k) for k in keys]
    assert first == [flags.decide(state, "cache", k) for k in keys]
    assert 0.25 < sum(first) / len(keys) < 0.35
    wider = flags.State(enabled=True, percent=60)
    assert all(flags.decide(wider, "cache", k) for k, on in zip(keys, first, strict=True) if on)


@pytest.mark.django_db
def test_a_flag_row_overrides_the_configured_default(settings) -> None:  # type: ignore[no-untyped-def]
    assert flags.enabled("rag") is True  # [features] rag = true
    FeatureFlag.objects.create(name="rag", enabled=False)
    flags.invalidate()
    assert flags.enabled("rag") is False
    settings.ORCHESTRATOR_FEATURES = {**settings.ORCHESTRATOR_FEATURES, "rag": False}
    FeatureFlag.objects.all().delete()
    flags.invalidate()
    assert flags.enabled("rag") is False
    with pytest.raises(KeyError):
        flags.enabled("no_such_flag")


@pytest.mark.django_db(transaction=True)
async def test_a_stage_turned_off_by_its_flag_is_skipped_and_recorded(engine: Engine) -> None:
    from inference import services

    await database_sync_to_async(services.ingest_document)("Zorp", "Zorp is a blue moon.", "z")
    on = await finished((await asubmit("What is Zorp?")).pk)
    assert on.passages and on.skipped_stages == []
    await database_sync_to_async(FeatureFlag.objects.create)(name="rag", enabled=False)
    flags.invalidate()
    off = await finished((await asubmit("What is Zorp?")).pk)
    assert off.passages == [] and off.skipped_stages == ["rag"] and "rag" not in off.timings


# --- a live server follows its file ------------------------------------------------------------


def prompt_status(url: str, prompt: str) -> int:
    return httpx.post(f"{url}/api/v1/infer", json={"prompt": prompt}).status_code


def wait_for(check, seconds: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def metrics_text(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def test_a_live_server_follows_its_file_and_sighup(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.toml"
    path.write_text(
        "[requests]\nmax_prompt_chars = 1000\n[config]\nreload_interval_seconds = 0.2\n"
    )
    env = embedded_env(tmp_path, ORCHESTRATOR_CONFIG=str(path))
    with serving(env, tmp_path / "server.log") as url:
        assert prompt_status(url, "ten chars!") == 202
        started = time.monotonic()
        rewrite(path, "[requests]\nmax_prompt_chars = 5\n[config]\nreload_interval_seconds = 0.2\n")
        assert wait_for(lambda: prompt_status(url, "ten chars!") == 400)
        assert time.monotonic() - started < 1.0
        rewrite(path, "[requests]\nmax_prompt_chars = 'many'\n")
        assert wait_for(lambda: 'result="invalid"} 1.0' in metrics_text(url))
        assert prompt_status(url, "ten chars!") == 400  # the old value is kept
        rewrite(path, "[requests]\nmax_prompt_chars = 5\n[worker]\nconcurrency = 3\n")
        assert wait_for(lambda: "orchestrator_config_restart_required 1.0" in metrics_text(url))


def test_sighup_reloads_at_once_without_polling(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.toml"
    path.write_text("[requests]\nmax_prompt_chars = 1000\n[config]\nreload_interval_seconds = 0\n")
    env = embedded_env(tmp_path, ORCHESTRATOR_CONFIG=str(path))
    with serving_process(env, tmp_path / "server.log") as (url, server):
        path.write_text("[requests]\nmax_prompt_chars = 5\n[config]\nreload_interval_seconds = 0\n")
        time.sleep(0.3)
        assert prompt_status(url, "ten chars!") == 202  # nobody polls: nothing yet
        server.send_signal(signal.SIGHUP)
        assert wait_for(lambda: prompt_status(url, "ten chars!") == 400)
