"""Overload: goodput under a step load of 0.5x, 1x, 2x and 5x measured capacity.

    .venv/bin/python -m bench.overload [--step-seconds 20] [--deadline 10]

Starts web (`manage.py serve`) and two workers on PostgreSQL + Redis with the
echo backend paced like a small model, measures capacity with a closed loop,
(completions per second while draining a backlog), then offers open-loop
Poisson arrivals at each multiple of it. Every request bypasses the response
cache (its prompts repeat) and carries a deadline; goodput is requests
completed within it, per second. The queue cap (admission control) is set
from the measured capacity so that what is accepted can finish in time; the
rest is refused at once with Retry-After.
Load generator: an asyncio httpx client in this process (say so when quoting).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx
import psycopg

from bench.loads import uncached
from harness.processes import (
    OPEN_ACCESS,
    free_port,
    manage,
    run_manage,
    stop,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parent.parent

SERVER = "postgres://postgres@127.0.0.1:5432"
DATABASE = "orchestrator_overload"
PROMPT = " ".join(f"w{i}" for i in range(20))  # 20 tokens at 50 ms: ~1 s of "model"


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        / 1024
    )


async def capacity(base_url: str, url: str, count: int = 80) -> float:
    """Completions per second while the workers drain a backlog of ``count``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        gate = asyncio.Semaphore(32)

        async def one() -> None:
            async with gate:
                body = uncached({"prompt": PROMPT, "metadata": {"step": "capacity"}})
                await client.post("/api/v1/infer", json=body)

        await asyncio.gather(*(one() for _ in range(count)))
    return await asyncio.to_thread(_drain_rate, url, count)


def _drain_rate(url: str, count: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            first, last, done = conn.execute(
                "SELECT min(started_at), max(finished_at), count(finished_at) "
                "FROM inference_inferencerequest WHERE metadata->>'step' = 'capacity'"
            ).fetchone() or (None, None, 0)
            if done == count:
                return count / (last - first).total_seconds()
            time.sleep(0.2)


async def step(base_url: str, rate: float, seconds: float, deadline: float, tag: str) -> dict:
    """Open-loop arrivals at ``rate``/s for ``seconds``; returns what the clients saw."""
    counts = {
        "offered": 0,
        "accepted": 0,
        "rejected": 0,
        "rejected_without_retry_after": 0,
        "errors": 0,
    }
    pending: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient) -> None:
        body = uncached({"prompt": PROMPT, "deadline_seconds": deadline, "metadata": {"step": tag}})
        try:
            response = await client.post("/api/v1/infer", json=body)
        except httpx.HTTPError:
            counts["errors"] += 1
            return
        if response.status_code == 202:
            counts["accepted"] += 1
        elif response.status_code in (429, 503):
            counts["rejected"] += 1
            counts["rejected_without_retry_after"] += "retry-after" not in response.headers
        else:
            counts["errors"] += 1

    limits = httpx.Limits(max_connections=256)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            counts["offered"] += 1
            task = asyncio.create_task(one(client))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*pending)
    return counts


def goodput(url: str, tag: str, deadline: float, seconds: float) -> tuple[float, float, float]:
    """(completed within the deadline per second, p50 s, p99 s) once the step drained."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(int(deadline * 10) + 100):
            active = conn.execute(
                "SELECT count(*) FROM inference_inferencerequest "
                "WHERE metadata->>'step' = %s AND status IN ('pending', 'processing')",
                (tag,),
            ).fetchone() or (0,)
            if not active[0]:
                break
            time.sleep(0.2)
        latencies = [
            row[0]
            for row in conn.execute(
                "SELECT extract(epoch FROM finished_at - created_at) "
                "FROM inference_inferencerequest "
                "WHERE metadata->>'step' = %s AND status = 'completed'",
                (tag,),
            ).fetchall()
        ]
    good = [latency for latency in latencies if latency <= deadline]
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return len(good) / seconds, quantiles[49], quantiles[98]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-seconds", type=float, default=20)
    parser.add_argument("--deadline", type=float, default=10)
    args = parser.parse_args()
    random.seed(1)
    url = f"{SERVER}/{DATABASE}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1",
        "ORCHESTRATOR_WORKER_MODE": "external",
        "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
        **OPEN_ACCESS,
        # A slow "model" and few slots: capacity far below what the web process and
        # this load generator can offer on two cores, so 5x is really offered.
        "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.05",
        "ORCHESTRATOR_CONCURRENCY": "4",
        "ORCHESTRATOR_MAX_PENDING": "0",
        "LOG_LEVEL": "WARNING",
    }
    run_manage("migrate", "--noinput", "-v0", env=env)
    logs = ROOT / "var" / "overload"
    logs.mkdir(parents=True, exist_ok=True)

    def start(cap: int) -> tuple:
        port = free_port()
        run_env = {**env, "ORCHESTRATOR_MAX_PENDING": str(cap)}
        web = manage(
            "serve", "--host", "127.0.0.1", "--port", str(port), env=run_env, log=logs / "web.log"
        )
        workers = [
            manage("run_pipeline", env=run_env, log=logs / f"worker-{i}.log") for i in range(2)
        ]
        wait_until_serving(f"http://127.0.0.1:{port}", web)
        return f"http://127.0.0.1:{port}", web, workers

    base_url, web, workers = start(cap=0)
    try:
        measured = asyncio.run(capacity(base_url, url))
    finally:
        for process in [web, *workers]:
            stop(process)
    # Accept only what can drain within half the deadline at the measured rate.
    cap = max(int(measured * args.deadline / 2), 1)
    base_url, web, workers = start(cap)
    rows = []
    try:
        for factor in (0.5, 1, 2, 5):
            tag = f"x{factor}"
            counts = asyncio.run(
                step(base_url, factor * measured, args.step_seconds, args.deadline, tag)
            )
            good, p50, p99 = goodput(url, tag, args.deadline, args.step_seconds)
            rss = (rss_mb(web.pid), max(rss_mb(w.pid) for w in workers))
            rows.append((factor, counts, good, p50, p99, rss))
    finally:
        for process in [web, *workers]:
            stop(process)
    report(measured, cap, args, rows)
    one = next(r[2] for r in rows if r[0] == 1)
    held = all(r[2] >= 0.9 * one for r in rows if r[0] > 1)
    every_refusal_explained = all(r[1]["rejected_without_retry_after"] == 0 for r in rows)
    return 0 if held and every_refusal_explained else 1


def report(measured: float, cap: int, args: argparse.Namespace, rows: list) -> None:  # type: ignore[type-arg]
    print(
        f"\nOverload: capacity {measured:.0f} completed/s (draining a backlog of 80); "
        f"queue cap {cap}; "
        f"deadline {args.deadline:.0f} s; {args.step_seconds:.0f} s per step; "
        "2 workers x 4 slots, ~1 s per request\n"
    )
    print(
        "| load | offered/s | accepted/s | refused/s (w/o Retry-After) | goodput/s | vs 1x | "
        "p50 s | p99 s | RSS web/worker MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    one = next(r[2] for r in rows if r[0] == 1)
    for factor, counts, good, p50, p99, rss in rows:
        seconds = args.step_seconds
        print(
            f"| {factor}x | {counts['offered'] / seconds:.0f} | "
            f"{counts['accepted'] / seconds:.0f} | "
            f"{counts['rejected'] / seconds:.0f} ({counts['rejected_without_retry_after']}) | "
            f"{good:.0f} | {good / one:.0%} | {p50:.2f} | {p99:.2f} | {rss[0]:.0f}/{rss[1]:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
