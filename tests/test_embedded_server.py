"""The servers for real, over a socket, with the embedded worker: `make run`'s
daphne runserver and, where behaviour must match, the production `serve` (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import websockets

from harness.processes import free_port, manage, run_manage, running, wait_until_serving


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


def runserver(data_dir: Path, env: dict[str, str], command: str = "runserver"):  # type: ignore[no-untyped-def]
    """Start `manage.py runserver` (what `make run` does), or `serve`, on a free port."""
    run_manage("migrate", "--noinput", "-v0", env=env)
    port = free_port()
    log = data_dir / "server.log"
    if command == "serve":
        return manage("serve", "--port", str(port), env=env, log=log), port
    return manage("runserver", f"127.0.0.1:{port}", "--noreload", env=env, log=log), port


both_servers = pytest.mark.parametrize("command", ["runserver", "serve"])


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
    server, port = runserver(data_dir, env)
    base = f"http://127.0.0.1:{port}"
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


@both_servers
def test_the_server_starts_the_worker_at_boot_and_resumes_queued_work(
    data_dir: Path, command: str
) -> None:
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
    server, _ = runserver(data_dir, env, command)
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


@both_servers
def test_server_shutdown_closes_websockets_with_1012_and_keeps_the_request(
    data_dir: Path, command: str
) -> None:
    env = {**env_for(data_dir), "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.2"}
    server, port = runserver(data_dir, env, command)
    with running(server):
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        close_code, request_id = asyncio.run(_submit_then_stop_server(port, server))
    assert close_code == 1012
    db = sqlite3.connect(data_dir / "db.sqlite3")
    status = db.execute(
        "SELECT status FROM inference_inferencerequest WHERE id = ?", [request_id.replace("-", "")]
    ).fetchone()[0]
    assert status == "pending", "handed back to the queue, not lost or failed"


async def _submit_then_stop_server(port: int, server) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    origin = f"http://127.0.0.1:{port}"
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/ws", origin=origin) as socket:
        await socket.send(json.dumps({"prompt": "slow " * 50}))
        request_id = json.loads(await socket.recv())["request_id"]
        assert json.loads(await socket.recv())["type"] == "token"
        server.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(socket.recv(), timeout=10)
        return closed.value.rcvd.code, request_id


@both_servers
def test_websockets_need_an_allowed_origin_and_oversized_frames_close_1009(
    data_dir: Path, command: str
) -> None:
    env = {**env_for(data_dir), "ORCHESTRATOR_MAX_BODY_BYTES": "10000"}
    server, port = runserver(data_dir, env, command)
    with running(server):
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        asyncio.run(_origin_and_frame_cap(port))


async def _origin_and_frame_cap(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/ws"
    for origin in (None, "http://evil.example"):
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(url, origin=origin):
                pass
    async with websockets.connect(url, origin=f"http://127.0.0.1:{port}") as socket:
        await socket.send(json.dumps({"prompt": "x" * 20000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), timeout=10)
        assert closed.value.rcvd.code == 1009


@pytest.mark.timeout(200)
def test_make_run_answers_the_seed_curl_example_with_the_local_model(data_dir: Path) -> None:
    env = {**env_for(data_dir), "ORCHESTRATOR_DEFAULT_BACKEND": "local"}  # make run's default
    server, port = runserver(data_dir, env)
    base = f"http://127.0.0.1:{port}"
    with running(server):
        wait_until_serving(base, server)
        submitted = httpx.post(f"{base}/api/v1/infer", json={"prompt": "What is Rust?"})
        request_id = submitted.json()["request_id"]
        # Up to two minutes: the model is slow when the machine is busy.
        for _ in range(4):
            url = f"{base}/api/v1/result/{request_id}"
            result = httpx.get(url, params={"wait": 30}, timeout=40)
            if result.status_code != 202:
                break
        body = result.json()
        assert (result.status_code, body["status"], body["backend_used"]) == (
            200,
            "completed",
            "local",
        )
        assert body["result"].strip() and body["result"] != "What is Rust?"
        assert body["usage"]["completion_tokens"] > 1


@both_servers
def test_an_open_sse_stream_does_not_hold_up_shutdown(data_dir: Path, command: str) -> None:
    env = {**env_for(data_dir), "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.2"}
    server, port = runserver(data_dir, env, command)
    base = f"http://127.0.0.1:{port}"
    with running(server):
        wait_until_serving(base, server)
        request_id = httpx.post(f"{base}/api/v1/infer", json={"prompt": "slow " * 100}).json()[
            "request_id"
        ]
        with httpx.stream("GET", f"{base}/api/v1/stream/{request_id}", timeout=30) as stream:
            lines = stream.iter_lines()
            assert any(line.startswith("event: token") for line in lines)
            began = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
            stopped_after = time.monotonic() - began
    assert stopped_after < 5, f"stream held shutdown for {stopped_after:.1f} s (20 s of tokens)"
