"""Start the real server and worker as OS processes, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

# For load generators that are one anonymous client at thousands of requests a
# minute (service suite, chaos, benchmarks): keys and per-caller limits off.
# The auth and rate-limit tests turn them on.
OPEN_ACCESS = {
    "ORCHESTRATOR_AUTH_REQUIRED": "false",
    "ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
    "ORCHESTRATOR_MAX_IN_FLIGHT": "0",
    "ORCHESTRATOR_MAX_STREAMS": "0",
    "ORCHESTRATOR_WS_MESSAGES_PER_SECOND": "0",
    "ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(argv: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the project root, output appended to ``log``."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
    )


def manage(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "manage.py", *args], env, log)


def create_api_key(env: dict[str, str], *args: str) -> str:
    """``manage.py create_api_key`` in ``env``'s database; the key it printed."""
    created = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "test-client", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def run_manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env}, check=True
    )


def wait_until_serving(
    base_url: str, process: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    """Block until ``/health/live`` answers (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{base_url} did not start in {timeout}s")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def running(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            stop(process)


def embedded_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The zero-config (embedded) mode in its own data directory, echo backend."""
    return {
        "ORCHESTRATOR_DATA_DIR": str(data_dir),
        "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
        "DATABASE_URL": "",
        "REDIS_URL": "",
        **overrides,
    }


@contextmanager
def serving(env: dict[str, str], log: Path, *command: str) -> Iterator[str]:
    """A migrated database and a server process on a free port: ``manage.py
    serve`` (with ``command`` as its options), or ``runserver`` if ``command``
    starts with it; yields its base URL, stops it after."""
    with serving_process(env, log, *command) as (url, _):
        yield url


@contextmanager
def serving_process(
    env: dict[str, str], log: Path, *command: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``serving``, yielding the process too (to signal it)."""
    run_manage("migrate", "--noinput", "-v0", env=env)
    port = free_port()
    if command[:1] == ("runserver",):
        args = [*command, f"127.0.0.1:{port}"]
    else:
        args = ["serve", *command, "--port", str(port)]
    server = manage(*args, env=env, log=log)
    with running(server):
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        yield f"http://127.0.0.1:{port}", server
