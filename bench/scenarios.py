"""The six measurements of issue 9 / DESIGN §12, the response cache's and
fairness under a flood, each returning one Table.

Each scenario starts the stacks it needs itself (fresh databases), warms them
up, measures, and records as a *problem* anything that must not happen at any
load: a non-2xx answer, a request lost or answered wrongly, a process exiting.
Missed targets are results, not problems. Every request bypasses the response
cache (``bench.loads.uncached``) except scenario g's, which measure it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import overload
from bench.loads import (
    CACHE_OUTCOMES,
    RESULT_WAIT,
    Operation,
    Samples,
    Sender,
    SocketSwarm,
    chat_body,
    chat_completion,
    chat_stream,
    closed_loop,
    first_token_chat,
    first_token_direct,
    first_token_sse,
    first_token_ws,
    open_loop,
    percentile,
    submit_and_poll,
    submit_and_poll_each,
    submit_and_stream,
    submit_batch,
    uncached,
)
from bench.report import Table
from bench.spy import hotspots, recording
from bench.stack import ROOT, Stack, Workspace, die_with_parent, rss_mb
from bench.upstream import FIRST_TOKEN_DELAY, MODEL
from bench.wrk import REFUSED, SubmitRun, describe, run_submit
from harness.processes import create_api_key

CONFIGS = ("embedded", "scaled")
SUBMIT_BODY = uncached({"prompt": "Summarise the benchmark results in one sentence."})
# Eight echo tokens: short enough that the pipeline, not the model, is measured.
STREAM_BODY = uncached({"prompt": "one two three four five six seven eight"})
TTFT_BODY = uncached({"prompt": "ping pong", "max_tokens": 1})


@dataclass(frozen=True)
class Plan:
    """How much of everything: ``FULL`` for ``make bench``, ``SMOKE`` for CI."""

    warmup_seconds: float
    submit_seconds: float
    submit_connections: tuple[int, ...]
    throughput_connections: int
    # b: each client path, in interleaved rounds (a path measured last on a fuller
    # database would look slower than one measured first).
    overhead_rounds: int
    latency_seconds: float
    throughput_seconds: float
    first_tokens: int
    idle_sockets: int
    streaming_sockets: int
    # e: a warm-up, then rounds until RSS plateaus or memory_max requests ran
    memory_warmup: int
    memory_round: int
    memory_max: int
    memory_plateau_mb: float  # per round, in every process, two rounds running
    local_runs: int
    local_tokens: int
    # g: requests over a pool of distinct prompts, each asked as often
    cache_requests: int
    cache_prompts: int
    cache_connections: int
    # h: a backlog to measure capacity, then seconds of each phase; every request's deadline
    fair_backlog: int
    fair_idle_seconds: float
    fair_flood_seconds: float
    fair_tier_seconds: float
    fair_deadline: float
    # i: batches of batch_size on batch_connections connections
    batches: int
    batch_size: int
    batch_connections: int


FULL = Plan(
    warmup_seconds=2,
    submit_seconds=10,
    submit_connections=(1, 16, 64),
    throughput_connections=64,
    overhead_rounds=2,
    latency_seconds=3,
    throughput_seconds=5,
    first_tokens=40,
    idle_sockets=10_000,
    streaming_sockets=1_000,
    memory_warmup=1_000,
    memory_round=2_000,
    memory_max=20_000,
    memory_plateau_mb=0.5,
    local_runs=3,
    local_tokens=128,
    cache_requests=200,
    cache_prompts=20,
    cache_connections=4,
    fair_backlog=80,
    fair_idle_seconds=30,
    fair_flood_seconds=60,
    fair_tier_seconds=30,
    fair_deadline=10,
    batches=20,
    batch_size=1_000,
    batch_connections=2,
)
SMOKE = Plan(
    warmup_seconds=1,
    submit_seconds=1,
    submit_connections=(4,),
    throughput_connections=16,
    overhead_rounds=1,
    latency_seconds=1,
    throughput_seconds=1,
    first_tokens=5,
    idle_sockets=200,
    streaming_sockets=50,
    memory_warmup=20,
    memory_round=20,
    memory_max=60,
    memory_plateau_mb=0.5,
    local_runs=1,
    local_tokens=8,
    cache_requests=24,
    cache_prompts=4,
    cache_connections=4,
    fair_backlog=16,
    fair_idle_seconds=2,
    fair_flood_seconds=3,
    fair_tier_seconds=2,
    fair_deadline=3,
    batches=4,
    batch_size=50,
    batch_connections=2,
)


@dataclass(frozen=True)
class Options:
    generator: str  # "wrk" or "python" (scenario a's submit load)
    profile_dir: Path | None = None  # --profile: py-spy the web process during a


def ws_endpoint(base_url: str) -> tuple[str, str]:
    """(WebSocket URL, Origin header) for a web process."""
    return base_url.replace("http://", "ws://") + "/api/v1/ws", base_url


def check_alive(stack: Stack, table: Table) -> None:
    for name, process in stack.processes().items():
        if process.poll() is not None:
            table.problems.append(f"{stack.config} {name} exited with {process.returncode}")


# --- a. durable submit ------------------------------------------------------------------


def durable_submit(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "a",
        "Durable submit: POST /api/v1/infer -> 202 once the row is committed",
        ["config", "connections", "accepted/s", "p50 ms", "p99 ms", "refused 429/503", "other"]
        + [f"CPU ms/req {role}" for role in ("web", "worker", "postgres")],
        notes=[
            f"Load generator: {describe(options.generator)}; closed loop, "
            f"{plan.submit_seconds:g} s per row after {plan.warmup_seconds:g} s warm-up; the "
            "worker(s) run the accepted requests meanwhile, and the queue is drained "
            "before the next row. CPU ms/req: CPU time of all web / worker / PostgreSQL "
            "processes during the row, per accepted request (embedded: all in web).",
        ],
    )
    for config in CONFIGS:
        with workspace.stack(config) as stack:
            for connections in plan.submit_connections:
                _submit_row(stack, connections, plan, options, table)
    return table


def _submit_row(stack: Stack, connections: int, plan: Plan, options: Options, table: Table) -> None:
    label = f"{stack.config} c={connections}"
    top = connections == max(plan.submit_connections)
    stack.wait_drained(120)
    rows_before = sum(stack.status_counts().values())
    warm = _submit(stack, connections, plan.warmup_seconds, options)
    cpu_before = stack.cpu_seconds()
    with _profiled(stack, options.profile_dir if top else None, plan.submit_seconds, table):
        run = _submit(stack, connections, plan.submit_seconds, options)
    cpu = {role: used - cpu_before[role] for role, used in stack.cpu_seconds().items()}
    check_alive(stack, table)
    stored = sum(stack.status_counts().values()) - rows_before
    target, met = _submit_target(stack.config, top, run.rate, run.p99_ms)
    table.add(
        target,
        met,
        config=stack.config,
        connections=connections,
        **{"accepted/s": run.rate, "p50 ms": run.p50_ms, "p99 ms": run.p99_ms},
        **{"refused 429/503": run.refused, "other": run.other},
        **{f"CPU ms/req {role}": _per_request(cpu, role, run.accepted) for role in cpu},
    )
    table.problems += _submit_problems(label, warm, run, stored)


def _per_request(cpu: dict[str, float], role: str, requests: int) -> float | str:
    if role == "worker" and not cpu[role]:
        return "in web"
    return cpu[role] * 1000 / requests if requests else 0.0


def _submit(stack: Stack, connections: int, seconds: float, options: Options) -> SubmitRun:
    return run_submit(options.generator, stack.web_urls, connections, seconds, SUBMIT_BODY)


@contextlib.contextmanager
def _profiled(stack: Stack, directory: Path | None, seconds: float, table: Table) -> Iterator[None]:
    """py-spy the first web process meanwhile (``--profile``); hotspots go to the table."""
    if directory is None:
        yield
        return
    output = directory / f"profile-a-{stack.config}-web0.txt"
    with recording(stack.webs[0].pid, output, seconds):
        yield
    table.details += [f"{stack.config} web0 ({output.name}):", *hotspots(output)]


def _submit_problems(label: str, warm: SubmitRun, run: SubmitRun, stored: int) -> list[str]:
    problems = []
    for status, count in sorted((Counter(warm.statuses) + Counter(run.statuses)).items()):
        if status != 202:
            kind = "refused" if status in REFUSED else "unexpected"
            problems.append(f"{label}: {count} x {status} {kind}")
    if run.errors:
        problems.append(f"{label}: socket errors {run.errors}")
    # More rows than 202s is fine: wrk stops without reading the last answers.
    if stored < warm.accepted + run.accepted:
        accepted = warm.accepted + run.accepted
        problems.append(f"{label}: {accepted} accepted but only {stored} rows stored")
    return problems


def _submit_target(config: str, top: bool, rate: float, p99: float) -> tuple[str, bool | None]:
    if not top:
        return "", None
    if config == "scaled":
        return "≥3000/s, p99 ≤25 ms", rate >= 3000 and p99 <= 25
    return "≥1500/s", rate >= 1500


# --- b. orchestration overhead ----------------------------------------------------------


NATIVE_SSE = "native SSE"
NOT_STREAMED = ("native long-poll", "/v1 non-stream")


def orchestration_overhead(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "b",
        "Orchestration overhead: submit -> the whole answer (echo backend, 0 ms/token)",
        ["config", "path", "load", "completed/s", "p50 ms", "p99 ms", "failed"],
        notes=[
            "Client: the bench's raw-asyncio HTTP/1.1 client (Python, same box), one "
            "keep-alive connection per closed-loop worker; 8 echo tokens per request, the "
            "answer checked against the prompt. Paths: native SSE = POST /api/v1/infer, "
            "then GET /api/v1/stream/<id> to `complete` (tokens and result checked); "
            "native long-poll = POST, then GET /api/v1/result/<id>?wait=10; /v1 stream = "
            "POST /v1/chat/completions `stream: true` to `data: [DONE]` (deltas joined); "
            "/v1 non-stream = the same POST unstreamed (`message.content`).",
            f"Each path: {plan.warmup_seconds / 2:g} s warm-up, then {plan.overhead_rounds} "
            f"rounds of {plan.latency_seconds:g} s at 1 connection and "
            f"{plan.throughput_seconds:g} s at many, path after path on the same stack, in "
            "reverse order every other round (rows merge the rounds).",
        ],
    )
    paths = {
        NATIVE_SSE: submit_and_stream(STREAM_BODY),
        "native long-poll": submit_and_poll(STREAM_BODY),
        "/v1 stream": chat_stream(STREAM_BODY),
        "/v1 non-stream": chat_completion(STREAM_BODY),
    }
    for config in CONFIGS:
        with workspace.stack(config) as stack:
            measured = _overhead_loads(stack.web_urls, paths, plan)
            check_alive(stack, table)
        for path, loads in measured.items():
            _overhead_rows(table, config, path, loads, measured[NATIVE_SSE][-1].rate, plan)
    return table


def _overhead_loads(
    urls: list[str], paths: dict[str, Operation], plan: Plan
) -> dict[str, tuple[Samples, Samples]]:
    """Each path warmed up, then rounds of one connection at a time and many
    connections, path after path; each path's rounds merged."""

    def run(operation: Operation, connections: int, seconds: float) -> Samples:
        return asyncio.run(closed_loop(urls, connections, operation, seconds=seconds))

    for operation in paths.values():
        run(operation, 1, plan.warmup_seconds / 2)
    rounds: dict[str, list[tuple[Samples, Samples]]] = {path: [] for path in paths}
    for number in range(plan.overhead_rounds):
        order = list(paths.items())
        for path, operation in order[::-1] if number % 2 else order:  # first and last alike
            low = run(operation, 1, plan.latency_seconds)
            high = run(operation, plan.throughput_connections, plan.throughput_seconds)
            rounds[path].append((low, high))
    return {
        path: (Samples.merged(low for low, _ in runs), Samples.merged(high for _, high in runs))
        for path, runs in rounds.items()
    }


def _overhead_rows(
    table: Table,
    config: str,
    path: str,
    loads: tuple[Samples, Samples],
    streamed_rate: float,
    plan: Plan,
) -> None:
    labels = ("1 connection, one at a time", f"{plan.throughput_connections} connections")
    for many, (load, samples) in enumerate(zip(labels, loads, strict=True)):
        target, met = _overhead_target(config, path, bool(many), samples, streamed_rate)
        table.add(
            target,
            met,
            config=config,
            path=path,
            load=load,
            **{"completed/s": samples.rate, "p50 ms": samples.percentile_ms(50)},
            **{"p99 ms": samples.percentile_ms(99), "failed": samples.failed},
        )
        table.problems += [f"{config} {path} {load}: {p}" for p in samples.problems()]


def _overhead_target(
    config: str, path: str, many: bool, samples: Samples, streamed_rate: float
) -> tuple[str, bool | None]:
    if path == NATIVE_SSE and not many:
        return "p50 ≤10 ms", samples.percentile_ms(50) <= 10
    if path == NATIVE_SSE and config == "scaled":
        return "≥1000 completed/s", samples.rate >= 1000
    if path in NOT_STREAMED and many:
        return "≥ native SSE's completed/s", samples.rate >= streamed_rate
    return "", None


# --- c. time to first token -------------------------------------------------------------


@contextlib.contextmanager
def upstream() -> Iterator[str]:
    """The loopback OpenAI-compatible upstream, in its own process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def first_token(workspace: Workspace, plan: Plan, options: Options) -> Table:
    delay_ms = FIRST_TOKEN_DELAY * 1000
    table = Table(
        "c",
        "Time to first token added over the backend's own",
        [
            "config",
            "path",
            "requests",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "added p50 ms",
            "added p99 ms",
        ],
        notes=[
            f"Upstream: harness/fake_llm_server.py (OpenAI streaming format) in its own process, "
            f"model `{MODEL}`: first token {delay_ms:.0f} ms after the request. `openai` backend, "
            "one request at a time, max_tokens 1. TTFT: client sends the prompt -> first token "
            "arrives (/v1 stream: POST /v1/chat/completions, model `openai`, -> the first "
            "`delta.content` chunk, not the role chunk); added = TTFT - the direct path's p50 "
            "(same client, straight to the upstream).",
        ],
    )
    with upstream() as upstream_url:
        direct_body = chat_body(TTFT_BODY, MODEL, stream=True)
        del direct_body["cache"]  # the orchestrator's field: nothing to the upstream
        direct = asyncio.run(first_token_direct(upstream_url, direct_body, plan.first_tokens))
        baseline = direct.percentile_ms(50)
        table.add(
            "",
            None,
            config="—",
            path="direct to upstream",
            requests=direct.ok,
            **{"TTFT p50 ms": baseline, "TTFT p99 ms": direct.percentile_ms(99)},
        )
        env = {
            "OPENAI_BASE_URL": f"{upstream_url}/v1",
            "OPENAI_MODEL": MODEL,
            "OPENAI_FALLBACK": "",
            "ORCHESTRATOR_DEFAULT_BACKEND": "openai",
        }
        for config in CONFIGS:
            with workspace.stack(config, env) as stack:
                measured = asyncio.run(_first_tokens(stack, plan.first_tokens))
                check_alive(stack, table)
            for path, samples in measured.items():
                _first_token_row(table, config, path, samples, baseline, plan.first_tokens)
    return table


async def _first_tokens(stack: Stack, count: int) -> dict[str, Samples]:
    url = stack.web_urls[0]
    ws_url, origin = ws_endpoint(url)
    chat = chat_body(TTFT_BODY, "openai", stream=True)  # /v1's model: the backend's name
    await first_token_sse(url, TTFT_BODY, 3)  # warm-up
    await first_token_chat(url, chat, 3)
    return {
        "SSE": await first_token_sse(url, TTFT_BODY, count),
        "WebSocket": await first_token_ws(ws_url, origin, TTFT_BODY, count),
        "/v1 stream": await first_token_chat(url, chat, count),
    }


def _first_token_row(
    table: Table, config: str, path: str, samples: Samples, baseline: float, expected: int
) -> None:
    added = [latency * 1000 - baseline for latency in samples.latencies]
    table.add(
        "added p50 ≤5 ms",
        percentile(added, 50) <= 5,
        config=config,
        path=path,
        requests=samples.ok,
        **{"TTFT p50 ms": samples.percentile_ms(50), "TTFT p99 ms": samples.percentile_ms(99)},
        **{"added p50 ms": percentile(added, 50), "added p99 ms": percentile(added, 99)},
    )
    table.problems += [f"{config} {path}: {p}" for p in samples.problems()]
    if samples.ok != expected:
        table.problems.append(f"{config} {path}: first tokens of {samples.ok}/{expected} requests")


# --- d. WebSocket capacity --------------------------------------------------------------


def websocket_capacity(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "d",
        "WebSocket capacity of ONE web process (scaled: uvicorn + wsproto, PostgreSQL + Redis)",
        ["config", "measure", "sockets", "result", "p50 ms", "p99 ms"],
        notes=[
            "Client: `websockets` asyncio client in the bench process, 50 handshakes at a "
            "time. RSS of the web process after warm-up vs with every socket open and idle; "
            "then the first sockets each submit one prompt (8 echo tokens) at once and read "
            "it to the result (2 workers x 32 slots).",
        ],
    )
    with workspace.stack("scaled", webs=1) as stack:
        swarm = asyncio.run(_swarm(stack, plan))
        check_alive(stack, table)
    opened, before, after, streams = swarm.opened, swarm.rss_before, swarm.rss_after, swarm.streams
    per_socket = (after - before) * 1024 / opened if opened else math.nan
    table.add(
        "",
        None,
        config="scaled",
        measure="idle sockets opened",
        sockets=plan.idle_sockets,
        result=f"{opened:,} in {swarm.open_seconds:.1f} s",
    )
    table.add(
        "≤30 KB/socket",
        per_socket <= 30,
        config="scaled",
        measure="web RSS before -> after",
        sockets=opened,
        result=f"{before:.0f} -> {after:.0f} MB = {per_socket:.1f} KB/socket",
    )
    table.add(
        "all complete",
        streams.ok == plan.streaming_sockets,
        config="scaled",
        measure="stream at once",
        sockets=plan.streaming_sockets,
        result=f"{streams.ok:,} completed in {streams.elapsed:.1f} s",
        **{"p50 ms": streams.percentile_ms(50), "p99 ms": streams.percentile_ms(99)},
    )
    if opened != plan.idle_sockets:
        failed = plan.idle_sockets - opened
        table.problems.append(f"{failed} sockets failed to open: {swarm.errors}")
    table.problems += [f"streams: {p}" for p in streams.problems()]
    return table


@dataclass
class SwarmResult:
    opened: int
    open_seconds: float
    rss_before: float
    rss_after: float
    streams: Samples
    errors: dict[str, int]


async def _swarm(stack: Stack, plan: Plan) -> SwarmResult:
    ws_url, origin = ws_endpoint(stack.web_urls[0])
    pid = stack.webs[0].pid
    warm = SocketSwarm(ws_url, origin)  # first connections load lazy code paths
    await warm.open(20)
    await warm.stream(20, STREAM_BODY, timeout=30)
    await warm.close()
    await asyncio.sleep(1)
    before = rss_mb(pid)
    swarm = SocketSwarm(ws_url, origin)
    try:
        seconds = await swarm.open(plan.idle_sockets)
        opened = len(swarm.sockets)
        await asyncio.sleep(2)  # let the server settle before reading its RSS
        after = rss_mb(pid)
        streams = await swarm.stream(plan.streaming_sockets, STREAM_BODY, timeout=120)
    finally:
        await swarm.close()
    return SwarmResult(opened, seconds, before, after, streams, dict(swarm.errors))


# --- e. memory growth ---------------------------------------------------------------------


def memory_growth(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "e",
        "Memory growth per 10,000 requests after the plateau (RSS)",
        [
            "config",
            "process",
            "after warm-up MB",
            "plateau MB",
            "final MB",
            "requests",
            "plateau at",
            "growth MB/10k",
        ],
        notes=[
            f"Load: submit + SSE to `complete` (as in b) on 16 connections; warm-up "
            f"{plan.memory_warmup:,} requests, then rounds of {plan.memory_round:,}, RSS read "
            "after each once the queue is drained, until every process grew less than "
            f"{plan.memory_plateau_mb:g} MB in each of two rounds running (the plateau) or "
            f"{plan.memory_max:,} requests ran. Growth: from the RSS where the plateau "
            "began (else the middle round) to the end, scaled to 10,000 requests.",
        ],
    )
    operation = submit_and_stream(STREAM_BODY)
    for config in CONFIGS:
        with workspace.stack(config) as stack:
            warm = _requests(stack, operation, plan.memory_warmup)
            readings = [(0, stack.rss_mb())]
            runs = []
            while readings[-1][0] < plan.memory_max and _plateau(readings, plan) is None:
                runs.append(_requests(stack, operation, plan.memory_round))
                if not runs[-1].ok:
                    break  # (its errors are the table's problems)
                readings.append((readings[-1][0] + runs[-1].ok, stack.rss_mb()))
            check_alive(stack, table)
        _memory_rows(table, config, readings, plan)
        for label, samples in (("warm-up", warm), ("run", Samples.merged(runs))):
            table.problems += [f"{config} {label}: {p}" for p in samples.problems()]
    return table


def _plateau(readings: list[tuple[int, dict[str, float]]], plan: Plan) -> int | None:
    """The index of the reading where the plateau began: every process grew less
    than ``memory_plateau_mb`` in each of the two rounds since (None: not yet)."""
    if len(readings) < 3:
        return None
    (_, start), (_, middle), (_, end) = readings[-3:]
    flat = all(
        middle[name] - start[name] < plan.memory_plateau_mb
        and end[name] - middle[name] < plan.memory_plateau_mb
        for name in start
    )
    return len(readings) - 3 if flat else None


def _memory_rows(
    table: Table, config: str, readings: list[tuple[int, dict[str, float]]], plan: Plan
) -> None:
    plateau = _plateau(readings, plan)
    begin = plateau if plateau is not None else len(readings) // 2
    (start_count, start), (end_count, end) = readings[begin], readings[-1]
    ran = end_count - start_count
    for name in start:
        growth = (end[name] - start[name]) * 10_000 / ran if ran else math.nan
        table.add(
            "≤5 MB/10k",
            growth <= 5,
            config=config,
            process=name,
            **{"after warm-up MB": readings[0][1][name], "plateau MB": start[name]},
            **{"final MB": end[name], "requests": end_count},
            **{"plateau at": f"{start_count:,}" if plateau is not None else "none"},
            **{"growth MB/10k": growth},
        )


def _requests(stack: Stack, operation: Operation, count: int) -> Samples:
    """``count`` requests, then a drained queue."""
    samples = asyncio.run(closed_loop(stack.web_urls, 16, operation, total=count))
    stack.wait_drained(60)
    return samples


# --- f. local model -----------------------------------------------------------------------


def local_model(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "f",
        "Local model: tokens/s through the pipeline vs llama-cpp-python direct",
        ["config", "path", "tokens/run", "tokens/s median", "min", "max", "vs direct"],
        notes=[
            f"python -m bench.local_model --runs {plan.local_runs} "
            f"--max-tokens {plan.local_tokens} "
            "(SmolLM2-135M Q4_1, temperature 0, alternating runs in one process; the "
            "pipeline figure runs from submit to the completed row).",
        ],
    )
    command = [
        sys.executable,
        "-m",
        "bench.local_model",
        *("--runs", str(plan.local_runs), "--max-tokens", str(plan.local_tokens)),
    ]
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "ORCHESTRATOR_DATA_DIR": str(workspace.tmp / "local-model"),
        "LOG_LEVEL": "WARNING",
    }
    output = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        preexec_fn=die_with_parent,
    ).stdout
    rows = {
        m[0]: m
        for m in re.findall(
            r"^\| (direct|pipeline) \| ([^|]+) \| ([^|]+) \| "
            r"([^|]+) \| ([^|]+) \| (\d+)% \|$",
            output,
            re.M,
        )
    }
    if set(rows) != {"direct", "pipeline"}:
        raise RuntimeError(f"unexpected output from local_model.py:\n{output}")
    for path, (_, tokens, median, low, high, share) in rows.items():
        pipeline = path == "pipeline"
        table.add(
            "≥90% of direct" if pipeline else "",
            int(share) >= 90 if pipeline else None,
            config="embedded (in-process engine)",
            path=path,
            **{"tokens/run": int(tokens), "tokens/s median": float(median)},
            min=float(low),
            max=float(high),
            **{"vs direct": f"{share}%"},
        )
    return table


# --- g. response cache ------------------------------------------------------------------

# Paced like bench/overload.py's small model (and c's upstream): a generation costs
# real time, which is what a hit or a collapse saves.
CACHE_TOKEN_DELAY = 0.05  # seconds per echo token
CACHE_PROMPT = "{label} question {number}: answered from cache or generated?"
CACHE_WARMUP_PROMPTS, CACHE_WARMUP_REQUESTS = 2, 8  # loads the hit and collapse paths
CACHE_ROWS = {
    "stored": "miss (generated, then stored)",
    "collapsed": "collapsed (shared a call in flight)",
    "hit": "hit (answered from the store)",
}


def response_cache(workspace: Workspace, plan: Plan, options: Options) -> Table:
    words = len(CACHE_PROMPT.split())
    table = Table(
        "g",
        "Response cache: repeated temperature-0 prompts, miss vs hit (embedded)",
        ["answered as", "requests", "share", "p50 ms", "p99 ms", "miss p50 / p50"],
        notes=[
            f"Echo backend at {CACHE_TOKEN_DELAY * 1000:.0f} ms/token, {words}-word prompts "
            f"(a miss generates for ~{CACHE_TOKEN_DELAY * words * 1000:.0f} ms). "
            f"{plan.cache_requests} requests over {plan.cache_prompts} distinct prompts "
            f"(each asked {plan.cache_requests // plan.cache_prompts} times, seeded shuffle), "
            f"`temperature: 0`, {plan.cache_connections} connections, closed loop; "
            f"each is POST /api/v1/infer, then GET /api/v1/result/<id>?wait={RESULT_WAIT}, "
            "checked against the echoed prompt. Latency: submit -> result; rows by the "
            "record's `cache_status` (its `Cache-Status` header must agree). After a warm-up of "
            f"{CACHE_WARMUP_REQUESTS} requests over {CACHE_WARMUP_PROMPTS} other prompts. "
            "Misses are few (one per prompt): their p99 is near their maximum.",
        ],
    )
    env = {"ORCHESTRATOR_ECHO_TOKEN_DELAY": str(CACHE_TOKEN_DELAY)}
    with workspace.stack("embedded", env) as stack:
        warm = _cache_run(stack, "warm-up", CACHE_WARMUP_PROMPTS, CACHE_WARMUP_REQUESTS, plan)
        run = _cache_run(stack, "measured", plan.cache_prompts, plan.cache_requests, plan)
        check_alive(stack, table)
    for label, (samples, _) in (("warm-up", warm), ("run", run)):
        table.problems += [f"{label}: {p}" for p in samples.problems()]
    _cache_rows(table, run[1], plan)
    return table


def _cache_run(
    stack: Stack, label: str, prompts: int, requests: int, plan: Plan
) -> tuple[Samples, dict[str, list[float]]]:
    """``requests`` over ``prompts`` distinct prompts: the load's samples, and the
    latencies of the correct answers by their ``cache_status``."""
    bodies = iter(_repeated_prompts(label, prompts, requests))
    by_cache_status: defaultdict[str, list[float]] = defaultdict(list)
    operation = submit_and_poll_each(bodies, by_cache_status)
    samples = asyncio.run(
        closed_loop(stack.web_urls, plan.cache_connections, operation, total=requests)
    )
    return samples, by_cache_status


def _repeated_prompts(label: str, prompts: int, requests: int) -> list[dict[str, object]]:
    """Each of ``prompts`` temperature-0 bodies ``requests // prompts`` times,
    shuffled with a fixed seed (the same order every run)."""
    pool = [
        {"prompt": CACHE_PROMPT.format(label=label, number=number), "temperature": 0}
        for number in range(prompts)
    ]
    bodies = pool * (requests // prompts)
    random.Random(prompts).shuffle(bodies)
    return bodies


def _cache_rows(table: Table, by_cache_status: dict[str, list[float]], plan: Plan) -> None:
    """A row per cache outcome, then the backend calls saved; answers the cache
    played no part in are problems (it did not engage, so nothing was measured)."""
    miss_p50 = percentile(by_cache_status.get("stored", []), 50)
    for status, label in CACHE_ROWS.items():
        latencies = by_cache_status.get(status, [])
        p50 = percentile(latencies, 50)
        row: dict[str, Any] = {
            "answered as": label,
            "requests": len(latencies),
            "share": f"{len(latencies) / plan.cache_requests:.0%}",
            "p50 ms": p50 * 1000,
            "p99 ms": percentile(latencies, 99) * 1000,
            "miss p50 / p50": f"{miss_p50 / p50:.1f}x" if latencies else "—",
        }
        table.add("", None, **row)
    saved = len(by_cache_status.get("hit", [])) + len(by_cache_status.get("collapsed", []))
    ideal = plan.cache_requests - plan.cache_prompts  # every prompt generated once
    row = {
        "answered as": "backend calls saved (hit + collapsed)",
        "requests": saved,
        "share": f"{saved / plan.cache_requests:.0%}",
    }
    table.add(f"{ideal} (one call per prompt)", saved == ideal, **row)
    for status in sorted(set(by_cache_status) - set(CACHE_OUTCOMES)):
        count = len(by_cache_status[status])
        table.problems.append(f"{count} answers with cache_status {status!r}: cache not used")


# --- h. fairness ------------------------------------------------------------------------

# Paced like bench/overload.py: ~1 s per request on 2 workers x 4 slots, so 5x
# capacity is a load the web processes and this client can really offer on 2 cores.
FAIR_ENV = {"ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.05", "ORCHESTRATOR_CONCURRENCY": "4"}
# Requests of 10-30 tokens (0.5-1.5 s): of equal length, the slots would finish in
# lockstep and a newcomer would wait for the whole wave, not for the next slot.
FAIR_WORDS = (10, 30)
FLOOD, TRICKLE = 5.0, 0.05  # arrival rates, as multiples of the measured capacity
TIER_MIX = {"high": 0.1, "normal": 0.3, "low": 0.6}  # shares of the tier phase's 5x load
FAIR_COLUMNS = ["phase", "key", "offered/s", "accepted/s", "refused/s", "expired"]
FAIR_COLUMNS += ["completed/s", "wait p50 ms", "wait p95 ms", "wait p99 ms"]
SETTLE = 2.0  # seconds into a phase before its goodput counts (the slots fill)
FAIR_RECORDS = (
    "SELECT metadata->>'sender', status, (timings->>'queue_wait')::float, "
    "extract(epoch FROM coalesce(started_at, deadline_at) - created_at)::float, "
    "status = 'completed' AND finished_at <= deadline_at, "
    "extract(epoch FROM finished_at)::float "
    "FROM inference_inferencerequest WHERE metadata->>'phase' = '{phase}'"
)


@dataclass
class Sent:
    """One sender's phase: what it was answered, then what its records say."""

    sender: Sender
    seconds: float
    waits: list[float]  # submit -> claim (timings.queue_wait); never claimed: its deadline
    expired: int
    goodput: float  # completed within the deadline per second, once the slots are full

    def row(self, phase: str, key: str) -> dict[str, Any]:
        return {
            "phase": phase,
            "key": key,
            "offered/s": self.sender.offered / self.seconds,
            "accepted/s": self.sender.accepted / self.seconds,
            "refused/s": self.sender.refused / self.seconds,
            "expired": self.expired,
            "completed/s": self.goodput,
            **{f"wait p{p} ms": percentile(self.waits, p) * 1000 for p in (50, 95, 99)},
        }


def fairness(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "h",
        "Fairness: one key floods at 5x capacity, another sends 5% (scaled: PostgreSQL + Redis)",
        [*FAIR_COLUMNS, "vs"],
    )
    with workspace.stack("scaled", FAIR_ENV) as stack:
        urls, database = stack.web_urls, stack.database
        capacity = asyncio.run(overload.capacity(urls[0], database, plan.fair_backlog))
        in_flight = max(int(capacity * plan.fair_deadline / 2), 1)
        flood_key = create_api_key(stack.env, "--max-in-flight", str(in_flight))
        trickle_key, tier_key = create_api_key(stack.env), create_api_key(stack.env)

        def sender(
            phase: str, name: str, rate: float, key: str, priority: str = "normal"
        ) -> tuple[str, Sender]:
            fields = {"deadline_seconds": plan.fair_deadline, "priority": priority}
            fields |= {"metadata": {"phase": phase, "sender": name}}
            rng = random.Random(f"{phase}-{name}")

            def body() -> dict[str, Any]:
                words = " ".join(f"w{i}" for i in range(rng.randint(*FAIR_WORDS)))
                return uncached({**fields, "prompt": words})

            return name, Sender(rate * capacity, body, key)

        def phase(name: str, seconds: float, *senders: tuple[str, Sender]) -> dict[str, Sent]:
            return _fair_phase(stack, name, seconds, dict(senders), plan, table)

        idle = phase("idle", plan.fair_idle_seconds, sender("idle", "B", TRICKLE, trickle_key))
        flood = phase(
            "flood",
            plan.fair_flood_seconds,
            sender("flood", "A", FLOOD, flood_key),
            sender("flood", "B", TRICKLE, trickle_key),
        )
        tiers = phase(
            "tiers",
            plan.fair_tier_seconds,
            *(sender("tiers", t, FLOOD * share, tier_key, t) for t, share in TIER_MIX.items()),
        )
        check_alive(stack, table)
    table.notes += _fair_notes(capacity, in_flight, plan)
    _fair_rows(table, capacity, idle["B"], flood, tiers, in_flight)
    return table


def _fair_phase(
    stack: Stack, phase: str, seconds: float, senders: dict[str, Sender], plan: Plan, table: Table
) -> dict[str, Sent]:
    """Offer the senders' arrivals for ``seconds``, let the queue drain (or expire),
    then read every record the phase stored."""
    began = time.time()
    asyncio.run(open_loop(stack.web_urls, list(senders.values()), seconds))
    ended = time.time()
    stack.wait_drained(plan.fair_deadline + 60)
    records: defaultdict[str, list[tuple]] = defaultdict(list)  # type: ignore[type-arg]
    for name, *record in stack.query(FAIR_RECORDS.format(phase=phase)):
        records[name].append(tuple(record))
    settle = min(SETTLE, seconds / 2)
    sent = {}
    for name, sender in senders.items():
        rows = records[name]
        label = f"{phase} {name}"
        table.problems += [f"{label}: {problem}" for problem in sender.problems()]
        if len(rows) != sender.accepted:
            table.problems.append(f"{label}: {sender.accepted} accepted, {len(rows)} stored")
        statuses = Counter(status for status, *_ in rows)
        for status in statuses.keys() - {"completed", "expired"}:
            table.problems.append(f"{label}: {statuses[status]} requests {status}")
        if any(status == "completed" and waited is None for status, waited, *_ in rows):
            table.problems.append(f"{label}: a completed request without timings.queue_wait")
        waits = [waited if waited is not None else bound for _, waited, bound, *_ in rows]
        good = [at for *_, ok, at in rows if ok and began + settle <= at <= ended]
        goodput = len(good) / (ended - began - settle)
        sent[name] = Sent(sender, seconds, waits, statuses["expired"], goodput)
    return sent


def _fair_rows(
    table: Table,
    capacity: float,
    idle: Sent,
    flood: dict[str, Sent],
    tiers: dict[str, Sent],
    in_flight: int,
) -> None:
    table.add("", None, **idle.row("idle", "B alone (5%)"), vs="—")
    share = flood["A"].goodput / capacity
    a_row = flood["A"].row("flood", f"A (5x, in flight ≤{in_flight})")
    table.add("≥90% of capacity", share >= 0.9, **a_row, vs=f"{share:.0%} of capacity")
    ratios = [percentile(flood["B"].waits, p) / percentile(idle.waits, p) for p in (50, 99)]
    b_row = flood["B"].row("flood", "B (5%)")
    vs = f"idle x{ratios[0]:.1f} (p50), x{ratios[1]:.1f} (p99)"
    table.add("p50, p99 ≤2x idle", all(r <= 2 for r in ratios), **b_row, vs=vs)
    high, low = (percentile(tiers[t].waits, 95) for t in ("high", "low"))
    for tier, share_of_load in TIER_MIX.items():
        target, met = ("p95 < low's", high < low) if tier == "high" else ("", None)
        row = tiers[tier].row("tiers (5x)", f"C {tier} ({share_of_load:.0%})")
        table.add(target, met, **row, vs="—")


def _fair_notes(capacity: float, in_flight: int, plan: Plan) -> list[str]:
    return [
        f"Capacity {capacity:.1f} completed/s (draining a backlog of {plan.fair_backlog}, as "
        "bench/overload.py, 20-token prompts): 2 workers x 4 slots, echo backend at 50 "
        f"ms/token; 2 web processes. Phase prompts: {FAIR_WORDS[0]}-{FAIR_WORDS[1]} tokens "
        "(uniform: 0.5-1.5 s per request). Every request has a "
        f"{plan.fair_deadline:g} s deadline and bypasses the cache.",
        "Load: open-loop Poisson arrivals (the bench's raw-asyncio HTTP/1.1 client, this "
        "process), each key with its own API key; rates are multiples of the capacity. "
        f"Phases: idle, key B alone at 5% ({plan.fair_idle_seconds:g} s); flood, key A at 5x "
        f"and B at 5% ({plan.fair_flood_seconds:g} s); tiers, key C at 5x as "
        + ", ".join(f"{share:.0%} {tier}" for tier, share in TIER_MIX.items())
        + f" ({plan.fair_tier_seconds:g} s). A's key has max_in_flight {in_flight} (what "
        "drains in half the deadline; excess refused 429 + Retry-After), B's and C's none.",
        "Wait: each record's timings.queue_wait (submit -> claim), read after the phase "
        "drained; a request never claimed counts its deadline (a lower bound). completed/s: "
        f"completed within the deadline per second, from {SETTLE:g} s into the phase to its end.",
        "No preemption: under load even a request first in line waits for the next slot to "
        "free; with completions ~Poisson at the capacity that is a median of ln 2 / capacity "
        f"= {math.log(2) / capacity * 1000:.0f} ms.",
    ]


# --- i. bulk submit -----------------------------------------------------------------------


def bulk_submit(workspace: Workspace, plan: Plan, options: Options) -> Table:
    table = Table(
        "i",
        "Bulk submit: POST /api/v1/infer/batch -> 202 once every row is committed",
        ["config", "batches", "prompts/s accepted", "batch p50 ms", "batch p99 ms", "drain s"],
        notes=[
            f"{plan.batches} batches of {plan.batch_size:,} eight-token prompts on "
            f"{plan.batch_connections} connections (closed loop); the workers run them "
            "meanwhile; drain s: until every accepted request has finished.",
        ],
    )
    operation = submit_batch(STREAM_BODY, plan.batch_size)
    for config in CONFIGS:
        with workspace.stack(config) as stack:
            stack.wait_drained(120)
            run = asyncio.run(
                closed_loop(stack.web_urls, plan.batch_connections, operation, total=plan.batches)
            )
            drain = stack.wait_drained(600)
            check_alive(stack, table)
        prompts_per_second = run.rate * plan.batch_size
        table.add(
            "≥10,000 prompts/s",
            prompts_per_second >= 10_000,
            config=config,
            batches=run.ok,
            **{
                "prompts/s accepted": prompts_per_second,
                "batch p50 ms": run.percentile_ms(50),
                "batch p99 ms": run.percentile_ms(99),
                "drain s": drain,
            },
        )
        table.problems += [f"{config}: {p}" for p in run.problems()]
    return table


SCENARIOS = {
    "a": durable_submit,
    "b": orchestration_overhead,
    "c": first_token,
    "d": websocket_capacity,
    "e": memory_growth,
    "f": local_model,
    "g": response_cache,
    "h": fairness,
    "i": bulk_submit,
}
