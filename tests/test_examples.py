"""The runnable clients in examples/, and the original's Python snippet, against a live server."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import ROOT

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


def test_examples_rest_api(live_server_url: str) -> None:
    out = run("examples/rest_api.py", "What is Rust?", "--url", live_server_url)
    assert "completed: What is Rust?" in out


def test_examples_websocket_api(live_server_url: str) -> None:
    url = live_server_url.replace("http://", "ws://")
    out = run("examples/websocket_api.py", "Hello there friend", "--url", url)
    assert "Hello there friend" in out and "[completed]" in out


def test_examples_sse_stream(live_server_url: str) -> None:
    out = run("examples/sse_stream.py", "Hi there", "--url", live_server_url)
    assert out.strip() == "Hi there\n[done]"
