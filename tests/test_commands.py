"""manage.py infer and manage.py run_pipeline."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from harness.processes import manage, run_manage, stop


@pytest.mark.django_db(transaction=True)
def test_infer_prints_the_streamed_tokens_and_the_final_status(capsys) -> None:  # type: ignore[no-untyped-def]
    call_command("infer", "What is Rust?")
    out, err = capsys.readouterr()
    assert "What is Rust?" in out
    assert "status: completed" in err


@pytest.mark.django_db(transaction=True)
def test_infer_fails_loudly_when_the_request_fails(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError, match="failed"):
        call_command("infer", "x", backend="failing")
    assert "upstream_error" in capsys.readouterr().err


def _worker_env(data_dir: Path) -> dict[str, str]:
    return {
        "ORCHESTRATOR_DATA_DIR": str(data_dir),
        "ORCHESTRATOR_WORKER_MODE": "external",
        "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
        "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.05",
        "ORCHESTRATOR_POLL_INTERVAL_SECONDS": "0.1",
        "DATABASE_URL": "",
        "REDIS_URL": "",
    }


def _queue(env: dict[str, str], prompt: str, count: int) -> None:
    run_manage(
        "shell",
        "-c",
        "from inference.services import submit_request, Submission\n"
        f"for _ in range({count}): submit_request(Submission(prompt={prompt!r}))",
        env=env,
    )


def _statuses(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT status FROM inference_inferencerequest")]


def _wait_for(data_dir: Path, status: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _statuses(data_dir).count(status) < count:
        assert time.monotonic() < deadline, f"never {count}x {status}: {_statuses(data_dir)}"
        time.sleep(0.05)


PROMPT = " ".join(f"w{i}" for i in range(30))  # ~1.5 s at 50 ms per token


def test_run_pipeline_finishes_in_flight_work_on_sigterm(tmp_path: Path) -> None:
    env = _worker_env(tmp_path)
    run_manage("migrate", "--noinput", "-v0", env=env)
    _queue(env, PROMPT, 2)
    worker = manage("run_pipeline", "--concurrency", "4", "--grace", "20", env=env)
    _wait_for(tmp_path, "processing", 2)
    assert stop(worker, signal.SIGTERM) == 0
    assert _statuses(tmp_path) == ["completed", "completed"]


def test_run_pipeline_hands_back_what_the_grace_cannot_cover(tmp_path: Path) -> None:
    env = _worker_env(tmp_path)
    run_manage("migrate", "--noinput", "-v0", env=env)
    _queue(env, PROMPT, 2)
    worker = manage("run_pipeline", "--concurrency", "4", "--grace", "0", env=env)
    _wait_for(tmp_path, "processing", 2)
    assert stop(worker, signal.SIGTERM) == 0
    assert _statuses(tmp_path) == ["pending", "pending"]
    # Another worker resumes them at once: no lease has to expire first.
    again = manage("run_pipeline", "--concurrency", "4", env=env)
    try:
        _wait_for(tmp_path, "completed", 2, timeout=10)
    finally:
        stop(again)
