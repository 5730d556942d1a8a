"""The README runs as written: every bash and Python block, against a real server.

One ``manage.py runserver`` process (as ``make run`` starts it: embedded mode,
SQLite, the default backend — the local SmolLM2 model) serves the whole module;
the blocks run in README order, as a reader would type them. Only the address
changes, and the placeholders a reader fills in by hand are filled with what the
earlier commands printed: ``<request_id>`` (the last submit), ``3f9c…`` (the
``X-Orchestrator-Cache-Key`` header), ``<prefix>`` (``create_api_key``'s stderr)
and ``$KEY`` (a created key). Every curl call must answer below 400 — or 403 on
a line whose comment says it is for staff (curl here is no staff session).

Blocks not meant to run carry ``<!-- not-run: reason -->`` (tests/readme_blocks.py);
the JavaScript block runs in Chromium (tests/browser/test_readme_js.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command

from harness.processes import ROOT, create_api_key, embedded_env, serving
from tests.readme_blocks import README, README_URL, RUNNABLE, SAMPLES, Block, readme_blocks

# Blocks that may be marked not-run: keep it short, each with its reason in the README.
MAX_NOT_RUN = 6
STATUS = re.compile(r"^@@status (\d{3})$", re.M)
# What a block's output must show, beyond "every call succeeded" (keyed by a line of it).
EXPECTED = {
    "curl -s http://127.0.0.1:8000/health": [r'"status":\s*"completed"', r"event: complete"],
    '"temperature": 0}\'           # again': [r"Cache-Status: orchestrator; hit"],
    "manage.py ingest docs/": [r"ingested 2 file", r'"passages":\s*\[\{[^]]*Quenthar-9'],
    "curl -sN http://127.0.0.1:8000/v1/chat/completions": [r"data: \[DONE\]"],
    "manage.py backends --check": [r"local", r"echo"],
    'create_api_key "mobile app"': [r"Revoked|revoked"],
}


@dataclass
class Reader:
    """A reader at a terminal: the server, and what earlier commands printed."""

    url: str
    env: dict[str, str]
    cwd: Path
    seen: dict[str, str] = field(default_factory=dict)
    last: str = ""  # what the block printed so far

    def fill(self, command: str) -> str:
        command = command.replace(README_URL, self.url)
        command = command.replace(
            README_URL.replace("http", "ws", 1), self.url.replace("http", "ws", 1)
        )
        for placeholder, name in (
            ("<request_id>", "request_id"),
            ("3f9c…", "cache_key"),
            ("<prefix>", "prefix"),
        ):
            if placeholder in command:
                assert name in self.seen, (
                    f"no {placeholder} in what the block printed:\n{self.last}"
                )
                command = command.replace(placeholder, self.seen[name])
        return command

    def remember(self, command: str, out: str) -> None:
        if "/infer" in command and (found := re.search(r'"request_id":\s*"([0-9a-f-]{36})"', out)):
            self.seen["request_id"] = found[1]
        if found := re.search(r"^X-Orchestrator-Cache-Key: (\w+)", out, re.M | re.I):
            self.seen["cache_key"] = found[1]
        if found := re.search(r"Created key (\w+)", out):
            self.seen["prefix"] = found[1]


def commands(code: str) -> Iterator[str]:
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    pending = ""
    for line in code.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""


def run_bash(reader: Reader, block: Block) -> str:
    transcript: list[str] = []
    for written in commands(block.code):
        reader.last = "\n".join(transcript)
        command = reader.fill(written)
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=reader.cwd,
            env=reader.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        out = done.stdout + done.stderr
        where = f"README line {block.line}: {written}\n{out}\nafter:\n{reader.last}"
        assert done.returncode == 0, where
        statuses = [int(s) for s in STATUS.findall(out)]
        if "# staff" in written:  # the README says it is for staff: not for curl's anonymity
            assert statuses and all(s == 403 for s in statuses), where
        else:
            assert all(s < 400 for s in statuses), where
        reader.remember(command, out)
        transcript.append(out)
    return "\n".join(transcript)


@contextlib.contextmanager
def busy_model(url: str, seconds: float = 7) -> Iterator[None]:
    """The local model busy for ``seconds`` more (one generation at a time), so a
    long-poll of the README waits longer than a client's default timeout (httpx: 5 s)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        body = {
            "prompt": "Write a long essay about the history of the Roman Empire.",
            "max_tokens": 2000,  # greedy: runs to the cap, far more than `seconds`
            "temperature": 0,
            "cache": {"mode": "bypass"},
            "rag": False,
        }
        rid = client.post("/api/v1/infer", json=body).json()["request_id"]
        while client.get(f"/api/v1/status/{rid}").json()["status"] == "pending":
            time.sleep(0.05)
        timer = threading.Timer(seconds, client.post, [f"/api/v1/requests/{rid}/cancel/"])
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            client.post(f"/api/v1/requests/{rid}/cancel/")
        status = client.get(f"/api/v1/status/{rid}").json()["status"]
        assert status == "cancelled", f"the model was busy for less than {seconds} s"


def run_python(reader: Reader, block: Block) -> str:
    extras = "requirements-extras.txt" in block.code
    if extras and importlib.util.find_spec("langchain_openai") is None:
        pytest.skip("needs requirements-extras.txt (make extras; CI installs it)")
    code = block.code.replace(README_URL, reader.url)
    with busy_model(reader.url) if "wait" in code else contextlib.nullcontext():
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=reader.cwd,
            env=reader.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, f"README line {block.line}:\n{done.stderr}"
    assert done.stdout.strip(), f"README line {block.line} printed nothing"
    return done.stdout


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reader]:
    data_dir = tmp_path_factory.mktemp("readme-server")
    # As `make run`: DEBUG, no keys, the local model. Shorter answers keep it quick.
    env = embedded_env(
        data_dir, ORCHESTRATOR_DEFAULT_BACKEND="local", ORCHESTRATOR_DEFAULT_MAX_TOKENS="24"
    )
    # The reader's working copy: the project's venv and manage.py, and files of their own.
    cwd = tmp_path_factory.mktemp("readme-cwd")
    (cwd / ".venv").symlink_to(ROOT / ".venv")
    (cwd / "manage.py").symlink_to(ROOT / "manage.py")
    (cwd / "docs").mkdir()
    (cwd / "docs" / "guide.md").write_text("# Guide\n\nStart the server with make run.\n")
    (cwd / "notes").mkdir()
    (cwd / "notes" / "handbook.md").write_text("# Handbook\n\nOn-call rotates weekly.\n")
    # Every curl call reports its status on a line of its own.
    (cwd / ".curlrc").write_text('write-out = "\\n@@status %{http_code}\\n"\n')
    with serving(env, data_dir / "server.log", "runserver", "--noreload") as url:
        shell_env = {**env, "KEY": create_api_key(env), "CURL_HOME": str(cwd)}
        yield Reader(url, {**os.environ, **shell_env}, cwd)


def runnable() -> list[Block]:
    return [b for b in readme_blocks() if b.lang in ("bash", "python") and not b.not_run]


@pytest.mark.parametrize("block", runnable(), ids=lambda b: b.id)
def test_the_readme_block_runs_as_written(reader: Reader, block: Block) -> None:
    out = run_bash(reader, block) if block.lang == "bash" else run_python(reader, block)
    for key, patterns in EXPECTED.items():
        if key in block.code:
            for pattern in patterns:
                assert re.search(pattern, out), (
                    f"README line {block.line}: no {pattern!r} in\n{out}"
                )


def test_every_block_is_run_or_says_why_not() -> None:
    blocks = readme_blocks()
    unknown = [b.id for b in blocks if b.lang not in RUNNABLE | SAMPLES]
    assert not unknown, f"teach tests/test_readme.py to run these, or mark them not-run: {unknown}"
    marked = [b for b in blocks if b.not_run]
    assert all(b.lang in RUNNABLE for b in marked), "only runnable blocks need a not-run marker"
    assert len(marked) <= MAX_NOT_RUN, [(b.id, b.not_run) for b in marked]
    assert all(len(b.not_run or "") > 10 for b in marked), "say why it is not run"
    languages = {b.lang for b in blocks if not b.not_run}
    assert {"bash", "python", "javascript"} <= languages
    for key in EXPECTED:  # every expectation still names a block
        assert any(key in b.code for b in blocks if not b.not_run), key
    for block in blocks:
        if block.lang == "json":
            json.loads(block.code)


def test_retrieval_is_as_the_readme_says(reader: Reader) -> None:
    """After the README's Zorblax document: a prompt sharing no content word retrieves
    nothing, one shared word is enough."""
    with httpx.Client(base_url=reader.url, timeout=30) as client:
        client.post(
            "/api/v1/documents/",
            json={
                "title": "Zorblax",
                "source": "wiki/zorblax",
                "text": "The capital of the Zorblax Archipelago is Quenthar-9.",
            },
        ).raise_for_status()

        def passages(prompt: str) -> list[dict]:
            submitted = client.post("/api/v1/infer", json={"prompt": prompt, "max_tokens": 1})
            rid = submitted.json()["request_id"]
            return client.get(f"/api/v1/result/{rid}", params={"wait": 20}).json()["passages"]

        assert passages("What is Rust?") == []
        assert [p["title"] for p in passages("What is the capital of France?")] == ["Zorblax"]


@pytest.mark.django_db
def test_create_api_key_says_how_to_get_an_owner() -> None:
    with pytest.raises(CommandError, match=r"No user 'alice'.*create_user\('alice'\)"):
        call_command("create_api_key", "mobile app", "--owner", "alice")


def test_the_readme_promises_no_backend_that_exists() -> None:
    assert "to come" not in README.read_text()  # e.g. "Anthropic to come": it is here
