"""manage.py infer and manage.py run_pipeline."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from harness.processes import ROOT, embedded_env, manage, run_manage, stop
from inference import services
from inference.models import InferenceRequest


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


@pytest.mark.parametrize(
    ("prompt", "options", "message"),
    [
        ("", {}, "prompt: This field may not be blank."),
        ("x", {"max_tokens": settings.ORCHESTRATOR_MAX_TOKENS_CEILING + 1}, "max_tokens: "),
        ("x", {"temperature": 2.5}, "temperature: "),
        ("x", {"backend": "nope"}, "backend: Unknown backend 'nope'. Valid backends: echo"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_infer_refuses_what_the_rest_api_refuses(prompt, options, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError) as refused:
        call_command("infer", prompt, **options)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert refused.value.returncode == 2
    assert not InferenceRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_infer_reports_a_refusal_in_one_line(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_PENDING = 1
    services.submit_request(services.Submission(prompt="waiting"))
    with pytest.raises(CommandError) as refused:
        call_command("infer", "one more")
    assert str(refused.value).startswith("refused (queue_full): The queue is full")
    assert InferenceRequest.objects.count() == 1


def test_infer_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    run_manage("migrate", "--noinput", "-v0", env=env)
    refused = subprocess.run(
        [sys.executable, "manage.py", "infer", "   "],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == "CommandError: prompt: This field may not be blank.\n"


@pytest.mark.django_db(transaction=True)
def test_infer_reads_the_prompt_from_stdin_for_a_dash(capsys) -> None:  # type: ignore[no-untyped-def]
    call_command("infer", "-", stdin=io.StringIO("What is\nRust?\n"))
    assert capsys.readouterr().out == "What is\nRust?\n"
    assert InferenceRequest.objects.get().prompt == "What is\nRust?"


@pytest.mark.django_db(transaction=True)
def test_infer_passes_temperature_and_no_rag_as_the_rest_fields() -> None:
    services.ingest_document("Zorblax", "The capital of Zorblax is Quenthar-9.", source="z")
    call_command("infer", "capital of Zorblax", temperature=0.5)
    call_command("infer", "capital of Zorblax", temperature=0.5, no_rag=True)
    with_rag, without = InferenceRequest.objects.order_by("created_at")
    assert with_rag.params == {"temperature": 0.5}
    assert with_rag.passages  # the control: this prompt does retrieve the document
    assert without.params == {"temperature": 0.5, "rag": {"enabled": False}}
    assert without.passages == []


@pytest.mark.django_db(transaction=True)
def test_infer_passes_a_system_prompt() -> None:
    call_command("infer", "hello", system="Answer in French.")
    request = InferenceRequest.objects.get()
    assert request.params == {"system": "Answer in French."}
    assert request.messages[0] == {"role": "system", "content": "Answer in French."}


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


# --- in a terminal ----------------------------------------------------------------

ANSI_ESCAPE = "\x1b["


class Terminal:
    """``manage.py ARGS`` with its stdout and stderr each on a pseudo-terminal (so
    Django styles output as it would for a person), read as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.out, out_slave = os.openpty()
        self.err, err_slave = os.openpty()
        # Django colours a terminal unless told not to; a person's shell does not tell it.
        inherited = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "DJANGO_COLORS"}}
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**inherited, "TERM": "xterm", **env},
            stdin=subprocess.DEVNULL,
            stdout=out_slave,
            stderr=err_slave,
        )
        os.close(out_slave)
        os.close(err_slave)
        self.text = {self.out: "", self.err: ""}
        self.open = {self.out, self.err}

    def read_until(self, fd: int, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text[fd])):
            assert time.monotonic() < deadline, f"never {pattern!r}: {self.text}"
            self._read(timeout=0.1)
        return found

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.open:  # read to the end: a full terminal would block the child
            assert time.monotonic() < deadline, f"still running: {self.text}"
            self._read(timeout=0.1)
        return self.process.wait(timeout)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select(list(self.open), [], [], timeout)
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child has closed its end
                data = b""
            if not data:
                self.open.discard(fd)
                os.close(fd)
            self.text[fd] += data.decode().replace("\r\n", "\n")

    @property
    def stdout(self) -> str:
        return self.text[self.out]

    @property
    def stderr(self) -> str:
        return self.text[self.err]


def _terminal_env(data_dir: Path) -> dict[str, str]:
    env = embedded_env(data_dir, ORCHESTRATOR_ECHO_TOKEN_DELAY="0.1")
    run_manage("migrate", "--noinput", "-v0", env=env)
    return env


def test_infer_in_a_terminal_streams_the_answer_alone_and_status_uncoloured(
    tmp_path: Path,
) -> None:
    terminal = Terminal("infer", "What is Rust?", env=_terminal_env(tmp_path))
    assert terminal.wait() == 0
    assert terminal.stdout == "What is Rust?\n"
    status = [
        line for line in terminal.stderr.splitlines() if "submitted" in line or "status:" in line
    ]
    assert len(status) == 2 and status[1] == "status: completed"
    assert ANSI_ESCAPE not in "".join(status)


def test_ctrl_c_cancels_the_request_and_exits_130(tmp_path: Path) -> None:
    env = _terminal_env(tmp_path)
    terminal = Terminal("infer", PROMPT, env=env)
    request_id = terminal.read_until(terminal.err, r"request (\S+) submitted")[1]
    terminal.read_until(terminal.out, "w0 w1")  # generating
    terminal.process.send_signal(signal.SIGINT)
    assert terminal.wait() == 130
    assert f"\ncancelled {request_id}\n" in terminal.stderr
    assert ANSI_ESCAPE not in terminal.stderr
    assert "w29" not in terminal.stdout
    assert _statuses(tmp_path) == ["cancelled"]
    # A worker started after (it would take a request handed back) leaves it alone.
    again = Terminal("infer", "next", env=env)
    assert again.wait() == 0
    assert sorted(_statuses(tmp_path)) == ["cancelled", "completed"]


@pytest.mark.django_db(transaction=True)
def test_ctrl_c_while_submitting_still_cancels_the_stored_request(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The row may be committed as Ctrl-C arrives: it is cancelled, not left to run."""
    import asyncio

    from inference.models import Transport
    from orchestrator_site.management.commands.infer import Command

    settings.ORCHESTRATOR_WORKER_MODE = "external"  # no worker here: the row would stay pending
    real = services.submit_request

    def slow_submit(submission, *args, **kwargs):  # type: ignore[no-untyped-def]
        stored = real(submission, *args, **kwargs)
        time.sleep(0.3)  # Ctrl-C lands after the commit, before the submit returns
        return stored

    monkeypatch.setattr(services, "submit_request", slow_submit)

    async def interrupted() -> None:
        run = asyncio.create_task(
            Command()._run(services.Submission(prompt="hi", transport=Transport.CLI))
        )
        await asyncio.sleep(0.1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(interrupted())
    assert list(InferenceRequest.objects.values_list("status", flat=True)) == ["cancelled"]
