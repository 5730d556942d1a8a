"""``make bench-peers``: our scaled stack beside its peers, one load generator, one table.

    .venv/bin/python -m bench.peers [--smoke] [--seconds N] [--json PATH]

Three systems run on this box, one at a time, each on loopback:

* **LiteLLM proxy** (the version pinned in ``bench/peers-requirements.txt``, in
  its own venv ``var/peers/litellm`` that ``make bench-peers`` installs), 2
  workers, one mock model whose answer is the bench prompt's eight words; it
  persists nothing.
* **naive app** (``bench/naive``): one DRF view validating the same body and
  storing it with one INSERT on PostgreSQL, uvicorn with 2 workers: the floor
  of a durable submit.
* **ours, scaled**: ``manage.py serve`` x2 + ``run_pipeline`` x2 on PostgreSQL and
  Redis, the echo backend at 0 ms/token, every token persisted (``bench.stack``).

Loads (closed loops, 64 keep-alive connections): streamed and unstreamed
``POST /v1/chat/completions`` (the bench's raw-asyncio client, which checks every
answer), durable submits (wrk when installed, the same script for the naive
app and ours) and, for submits, an open-loop Poisson load at half the
saturating rate for the latency a client sees when the box is not saturated.
Each row reports the CPU time of the system's own processes plus PostgreSQL's
per completed request, and the peak RSS of its own processes (PostgreSQL and
Redis are shared services, not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from bench.loads import (
    Operation,
    Samples,
    Sender,
    chat_completion,
    chat_stream,
    closed_loop,
    open_loop,
    submit_and_poll,
    submit_and_stream,
)
from bench.report import Table, machine
from bench.scenarios import STREAM_BODY, SUBMIT_BODY
from bench.stack import (
    PG_SERVER,
    ROOT,
    Workspace,
    check_services,
    cpu_seconds,
    pids_named,
    rss_mb,
    spawn,
)
from bench.wrk import describe, generator, run_submit
from harness.processes import free_port

OUTPUT = ROOT / "var" / "bench"
LITELLM_VENV = ROOT / "var" / "peers" / "litellm"
REQUIREMENTS = Path(__file__).with_name("peers-requirements.txt")
NAIVE_DB = f"orchestrator_bench_naive_{os.getpid()}"
MOCK_MODEL = "mock"
CONNECTIONS = 64
SYSTEMS = ("litellm", "naive", "ours")
# The same words for every system: our echo backend answers the prompt itself,
# LiteLLM's mock model this fixed answer. Neither sends the cache field.
PROMPT = STREAM_BODY["prompt"]
PLAIN_BODY = {"prompt": PROMPT}


@dataclass(frozen=True)
class Plan:
    warmup_seconds: float
    seconds: float  # per load


FULL = Plan(warmup_seconds=3, seconds=15)
SMOKE = Plan(warmup_seconds=1, seconds=2)


@dataclass
class System:
    """One system under test while it runs: where to send load, and what to meter."""

    name: str
    urls: list[str]
    roots: list[int]  # pids of its processes; their children count too
    uses_postgres: bool
    peak_rss: float = 0.0

    def pids(self) -> list[int]:
        return [pid for root in self.roots for pid in process_tree(root)]

    def cpu_seconds(self) -> float:
        own = sum(cpu_seconds(pid) for pid in self.pids())
        shared = sum(cpu_seconds(pid) for pid in pids_named("postgres"))
        return own + (shared if self.uses_postgres else 0.0)

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, RuntimeError):
                total += rss_mb(pid)
        return total


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (uvicorn's and LiteLLM's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


@contextlib.contextmanager
def metered(system: System) -> Iterator[dict[str, float]]:
    """CPU seconds used meanwhile (``used["cpu"]``), and the peak RSS sampled
    every 0.5 s folded into ``system.peak_rss``."""
    used: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            system.peak_rss = max(system.peak_rss, system.rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    before = system.cpu_seconds()
    sampler.start()
    try:
        yield used
    finally:
        stop.set()
        sampler.join()
        used["cpu"] = system.cpu_seconds() - before


# --- the systems ----------------------------------------------------------------------------


def wait_answering(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Until ``url`` answers anything below 500 (or the process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and its children (uvicorn's workers), then wait."""
    tree = process_tree(process.pid)
    for pid in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def litellm_version() -> str:
    line = next(x for x in REQUIREMENTS.read_text().splitlines() if x.startswith("litellm"))
    return line.partition("==")[2].strip()


LITELLM_CONFIG = {
    "model_list": [
        {
            "model_name": MOCK_MODEL,
            "litellm_params": {"model": "openai/mock", "api_key": "none", "mock_response": PROMPT},
        }
    ],
    "litellm_settings": {"drop_params": True, "telemetry": False},
}


@contextlib.contextmanager
def litellm(logs: Path, workdir: Path) -> Iterator[System]:
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        raise SystemExit(f"{executable} is missing: run `make bench-peers` (it installs it)")
    config = workdir / "litellm.yaml"
    config.write_text(json.dumps(LITELLM_CONFIG))  # JSON is YAML
    port = free_port()
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price map at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_ADMIN_UI": "True",
        # No auth, as ours runs in the bench (API keys off): the same work on both sides.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    argv = [str(executable), "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--num_workers", "2"]
    # No database: LiteLLM then keeps no keys or spend, as in its own benchmarks.
    process = spawn(argv, env, logs / "litellm.log", unset=("DATABASE_URL", "REDIS_URL"))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answering(f"{url}/health/liveliness", process)
        yield System(f"LiteLLM {litellm_version()}", [url], [process.pid], uses_postgres=False)
    finally:
        stop(process)


@contextlib.contextmanager
def naive(logs: Path) -> Iterator[System]:
    database = f"{PG_SERVER}/{NAIVE_DB}"
    env = {"DJANGO_SETTINGS_MODULE": "bench.naive.settings", "NAIVE_DATABASE_URL": database}
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{NAIVE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{NAIVE_DB}"')
    process = None
    try:
        migrate = [sys.executable, "-m", "django", "migrate", "--run-syncdb", "-v0"]
        subprocess.run(migrate, cwd=ROOT, env={**os.environ, **env}, check=True)
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "bench.naive.asgi:application"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
        argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        argv += ["--log-level", "warning"]
        process = spawn(argv, env, logs / "naive.log")
        url = f"http://127.0.0.1:{port}"
        wait_answering(f"{url}/api/v1/infer", process)
        yield System("naive DRF + INSERT", [url], [process.pid], uses_postgres=True)
    finally:
        if process is not None:
            stop(process)
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{NAIVE_DB}" WITH (FORCE)')


@contextlib.contextmanager
def ours(workspace: Workspace) -> Iterator[System]:
    with workspace.stack("scaled") as stack:
        roots = [process.pid for process in stack.processes().values()]
        yield System("ours, scaled", stack.web_urls, roots, uses_postgres=True)


# --- the loads ------------------------------------------------------------------------------


@dataclass
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    problems: list[str] = field(default_factory=list)


def closed(system: System, operation: Operation, plan: Plan) -> Result:
    def run(seconds: float) -> Samples:
        return asyncio.run(closed_loop(system.urls, CONNECTIONS, operation, seconds=seconds))

    run(plan.warmup_seconds)
    with metered(system) as used:
        samples = run(plan.seconds)
    return Result(
        samples.rate,
        samples.percentile_ms(50),
        samples.percentile_ms(99),
        _per_request(used["cpu"], samples.ok),
        samples.problems(expected_status=202),
    )


def submits(system: System, plan: Plan, tool: str) -> Result:
    run_submit(tool, system.urls, CONNECTIONS, plan.warmup_seconds, SUBMIT_BODY)
    with metered(system) as used:
        run = run_submit(tool, system.urls, CONNECTIONS, plan.seconds, SUBMIT_BODY)
    problems = [f"{n} x HTTP {s}" for s, n in run.statuses.items() if s != 202]
    problems += [f"{n} x {kind}" for kind, n in run.errors.items()]
    per_request = _per_request(used["cpu"], run.accepted)
    return Result(run.rate, run.p50_ms, run.p99_ms, per_request, problems)


def paced_submits(system: System, rate: float, plan: Plan) -> Result:
    """Poisson arrivals at ``rate``/s (open loop): the latency when not saturated."""
    sender = Sender(rate, lambda: dict(SUBMIT_BODY), key="")
    with metered(system) as used:
        began = time.perf_counter()
        asyncio.run(open_loop(system.urls, [sender], plan.seconds))
        elapsed = time.perf_counter() - began
    samples = Samples(latencies=sender.latencies, elapsed=elapsed)
    return Result(
        sender.accepted / elapsed,
        samples.percentile_ms(50),
        samples.percentile_ms(99),
        _per_request(used["cpu"], sender.accepted),
        sender.problems(),
    )


def _per_request(cpu: float, requests: int) -> float:
    return cpu * 1000 / requests if requests else float("nan")


STREAMED = "streamed /v1/chat/completions"
UNSTREAMED = "non-streamed /v1/chat/completions"
SUBMITS = "durable submit (202)"
HALF = "durable submit at half the saturating rate"


def measure(workspace: Workspace, plan: Plan, tool: str, systems: list[str]) -> Table:
    table = Table(
        "peers",
        "Side by side: LiteLLM proxy, a naive DRF + INSERT app and ours (scaled), one box",
        ["load", "system", "per second", "p50 ms", "p99 ms", "CPU ms/req", "RSS MB", "ratio"],
        notes=[
            f"{CONNECTIONS} connections, closed loops: {plan.warmup_seconds:g} s warm-up, then "
            f"{plan.seconds:g} s measured per row; the bench's raw-asyncio client for "
            f"completions (every answer checked), {describe(tool)} for submits. CPU ms/req: "
            "the system's own processes plus PostgreSQL's (LiteLLM uses none) per completed "
            "request. RSS MB: peak of the system's own processes under its loads.",
            "ratio: ours over LiteLLM's for completions, over the naive app's for submits "
            "(for latency rows, theirs over ours: above 1 is better for us). Ours streams 8 "
            "echo tokens, each persisted; LiteLLM's mock model streams the same words and "
            "persists nothing.",
        ],
    )
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-peers-"))
    measured: dict[tuple[str, str], Result] = {}
    rss: dict[str, float] = {}
    names = {"LiteLLM": "LiteLLM", "naive": "naive DRF + INSERT"}
    if "litellm" in systems:
        with litellm(workspace.logs, workdir) as system:
            measured[STREAMED, "LiteLLM"] = closed(
                system, chat_stream(PLAIN_BODY, MOCK_MODEL), plan
            )
            measured[UNSTREAMED, "LiteLLM"] = closed(
                system, chat_completion(PLAIN_BODY, MOCK_MODEL), plan
            )
            rss["LiteLLM"], names["LiteLLM"] = system.peak_rss, system.name
    if "naive" in systems:
        with naive(workspace.logs) as system:
            measured[SUBMITS, "naive"] = submits(system, plan, tool)
            half = measured[SUBMITS, "naive"].rate / 2
            measured[HALF, "naive"] = paced_submits(system, half, plan)
            rss["naive"] = system.peak_rss
    if "ours" in systems:
        with ours(workspace) as system:
            measured[STREAMED, "ours /v1"] = closed(system, chat_stream(STREAM_BODY), plan)
            measured[STREAMED, "ours native SSE"] = closed(
                system, submit_and_stream(STREAM_BODY), plan
            )
            measured[UNSTREAMED, "ours /v1"] = closed(system, chat_completion(STREAM_BODY), plan)
            measured[UNSTREAMED, "ours native long-poll"] = closed(
                system, submit_and_poll(STREAM_BODY), plan
            )
            measured[SUBMITS, "ours"] = submits(system, plan, tool)
            half = measured[SUBMITS, "ours"].rate / 2
            measured[HALF, "ours"] = paced_submits(system, half, plan)
            rss["ours"] = system.peak_rss
    _rows(table, measured, rss, names)
    return table


def _rows(
    table: Table,
    measured: dict[tuple[str, str], Result],
    rss: dict[str, float],
    names: dict[str, str],
) -> None:
    nothing = Result(math.nan, math.nan, math.nan, math.nan)
    for (load, who), result in measured.items():
        peer = "LiteLLM" if load in (STREAMED, UNSTREAMED) else "naive"
        baseline = measured.get((load, peer), nothing)
        ratio = _ratio(result.rate, baseline.rate)
        if load == HALF:
            ratio = _ratio(baseline.p99_ms, result.p99_ms)
        target, met = _target(load, who, ratio, result)
        table.add(
            target,
            met,
            load=load,
            system=names.get(who, who),
            **{"per second": result.rate, "p50 ms": result.p50_ms, "p99 ms": result.p99_ms},
            **{"CPU ms/req": result.cpu_ms, "RSS MB": rss.get(who, rss.get("ours", math.nan))},
            ratio="1x" if who in names else "—" if math.isnan(ratio) else f"{ratio:.2f}x",
        )
        table.problems += [f"{load}, {who}: {problem}" for problem in result.problems]
    if "ours" in rss:
        share = _ratio(rss["ours"], rss.get("LiteLLM", math.nan))
        table.add(
            "≤ 50% of LiteLLM's",
            None if math.isnan(share) else share <= 0.5,
            load="whole stack RSS under load",
            system="ours, scaled",
            **{"RSS MB": rss["ours"]},
            ratio="—" if math.isnan(share) else f"{share:.0%} of LiteLLM's",
        )


def _ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs else math.nan


def _target(load: str, who: str, ratio: float, result: Result) -> tuple[str, bool | None]:
    if math.isnan(ratio) and load != HALF:
        return "", None  # (its peer was not measured)
    if who == "ours /v1" and load == STREAMED:
        return "≥ 2x LiteLLM", ratio >= 2
    if who == "ours /v1" and load == UNSTREAMED:
        return "≥ 1x LiteLLM", ratio >= 1
    if who == "ours" and load == SUBMITS:
        return "≥ 1x naive", ratio >= 1
    if who == "ours" and load == HALF:
        return "p99 ≤ 25 ms", result.p99_ms <= 25
    return "", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds of load: checks, not numbers")
    parser.add_argument("--seconds", type=float, default=None, help="per measured load")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", type=Path, default=OUTPUT / "peers.json")
    parser.add_argument(
        "--only", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    args = parser.parse_args(argv)
    systems = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    check_services()
    plan = SMOKE if args.smoke else FULL
    if args.seconds:
        plan = Plan(plan.warmup_seconds, args.seconds)
    tool = generator(args.generator)
    info = machine()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    print(
        f"# Prompt Orchestrator beside its peers ({started})\n\n"
        f"{info['nproc']} cores, {info['cpu']}, Python {info['python']}, {info['platform']}\n",
        flush=True,
    )
    workspace = Workspace(OUTPUT / "logs-peers")
    began = time.monotonic()
    try:
        table = measure(workspace, plan, tool, systems)
    finally:
        workspace.close()
    table.seconds = time.monotonic() - began
    print(table.markdown(), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {"started": started, "machine": info, "table": table.as_json()}
    args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 1 if table.problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
