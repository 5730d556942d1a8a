"""`make run`'s server for real: daphne runserver + embedded worker, over a socket."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, manage, run_manage, running, wait_until_serving


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


def env_for(data_dir: Path) -> dict[str, str]:
    return {
        "ORCHESTRATOR_DATA_DIR": str(data_dir),
        "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
        "ORCHESTRATOR_POLL_INTERVAL_SECONDS": "0.2",
        "DATABASE_URL": "",
        "REDIS_URL": "",
    }


def test_the_seed_curl_flow_works_against_runserver(data_dir: Path) -> None:
    env = env_for(data_dir)
    run_manage("migrate", "--noinput", "-v0", env=env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = manage(
        "runserver", f"127.0.0.1:{port}", "--noreload", env=env, log=data_dir / "server.log"
    )
    with running(server):
        wait_until_serving(base, server)
        submitted = httpx.post(f"{base}/api/v1/infer", json={"prompt": "What is Rust?"})
        assert submitted.status_code == 202
        request_id = submitted.json()["request_id"]
        for _ in range(100):
            result = httpx.get(f"{base}/api/v1/result/{request_id}")
            if result.status_code == 200:
                break
            time.sleep(0.05)
        assert result.status_code == 200
        assert result.json()["status"] == "completed"
        assert result.json()["result"] == "What is Rust?"
        status = httpx.get(f"{base}/api/v1/status/{request_id}").json()
        assert status["status"] == "completed"
        assert httpx.get(f"{base}/health").json()["status"] == "healthy"


def test_runserver_starts_the_worker_at_boot_and_resumes_queued_work(data_dir: Path) -> None:
    env = env_for(data_dir)
    run_manage("migrate", "--noinput", "-v0", env=env)
    # Queue a request while no server runs (the doorbell rings into the void).
    run_manage(
        "shell",
        "-c",
        "from inference.services import submit_request, Submission;"
        "submit_request(Submission(prompt='queued while down'))",
        env=env,
    )
    port = free_port()
    server = manage(
        "runserver", f"127.0.0.1:{port}", "--noreload", env=env, log=data_dir / "server.log"
    )
    with running(server):
        # No HTTP request at all: only the boot-time worker can run it.
        db = sqlite3.connect(data_dir / "db.sqlite3")
        status = None
        for _ in range(200):
            status, result = db.execute(
                "SELECT status, result FROM inference_inferencerequest"
            ).fetchone()
            if status == "completed":
                break
            time.sleep(0.05)
        assert (status, result) == ("completed", "queued while down")
