"""The runnable clients in examples/, and the original's Python snippet, against a live server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness.processes import ROOT, create_api_key, embedded_env, free_port, serving

# reference/phase3-web-api.md, "Integration Examples / Python", as written but
# for the address (the original served :8080; `make run` serves :8000).
REFERENCE_PYTHON = """
import requests
import time

# Submit request
response = requests.post(
    'http://localhost:8080/api/v1/infer',
    json={'prompt': 'What is Rust?'}
)

request_id = response.json()['request_id']

# Poll for result
while True:
    result = requests.get(
        f'http://localhost:8080/api/v1/result/{request_id}'
    )

    if result.status_code == 200:
        print(result.json()['result'])
        break

    time.sleep(1)
"""


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_the_reference_python_snippet_works(live_server_url: str) -> None:
    code = REFERENCE_PYTHON.replace("http://localhost:8080", live_server_url)
    assert run("-c", code).strip() == "What is Rust?"


def as_ws(url: str) -> str:
    return url.replace("http://", "ws://", 1)


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_examples_rest_api(live_server_url: str, scheme: str) -> None:
    url = as_ws(live_server_url) if scheme == "ws" else live_server_url
    out = run("examples/rest_api.py", "What is Rust?", "--url", url)
    assert "completed: What is Rust?" in out


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_examples_websocket_api(live_server_url: str, scheme: str) -> None:
    url = as_ws(live_server_url) if scheme == "ws" else live_server_url
    out = run("examples/websocket_api.py", "Hello there friend", "--url", url)
    assert "Hello there friend" in out and "[completed]" in out


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_examples_sse_stream(live_server_url: str, scheme: str) -> None:
    url = as_ws(live_server_url) if scheme == "ws" else live_server_url
    out = run("examples/sse_stream.py", "Hi there", "--url", url)
    assert out.strip() == "Hi there\n[done]"


@pytest.mark.parametrize("scheme", ["http", "ws"])
@pytest.mark.parametrize("example", ["rest_api.py", "sse_stream.py", "websocket_api.py"])
def test_a_refused_connection_is_one_line_not_a_traceback(example: str, scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"  # nothing listens there
    args = [sys.executable, f"examples/{example}", "Hello", "--url", url]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0], done.stderr
    assert "refused" in lines[0].lower() or "connect" in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server with keys required (as in production), and a key for it."""
    data_dir = tmp_path_factory.mktemp("keyed-server")
    env = embedded_env(data_dir, ORCHESTRATOR_AUTH_REQUIRED="true")
    with serving(env, data_dir / "server.log") as url:
        yield url, create_api_key(env)


@pytest.mark.parametrize("example", ["rest_api.py", "sse_stream.py", "websocket_api.py"])
def test_the_examples_send_the_key_from_the_environment(keyed_server, example: str) -> None:  # type: ignore[no-untyped-def]
    url, key = keyed_server
    if example == "websocket_api.py":
        url = url.replace("http://", "ws://")
    args = [sys.executable, f"examples/{example}", "Hello keyed world", "--url", url]
    without = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert without.returncode != 0  # refused: 401, or the socket closed with 4401
    assert "Traceback" not in without.stderr and len(without.stderr.strip().splitlines()) == 1
    assert "401" in without.stderr, without.stderr
    env = {**os.environ, "ORCHESTRATOR_API_KEY": key}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Hello keyed world" in done.stdout
