"""``make bench-memory``: what a server keeps allocated as requests go by (tracemalloc).

Scenario e measures the RSS of real processes, which cannot say *what* grew.
This runs the embedded server (uvicorn, the engine inside, SQLite: what scenario
e's largest growth came from) in this process under ``tracemalloc``, drives it
from a thread with the bench's raw HTTP client (submit, then SSE to
``complete``), and compares two snapshots: after a warm-up, and after the
measured requests, each after a full garbage collection. It prints the RSS and
traced growth per 10,000 requests and the allocation sites that grew most.
tracemalloc slows Python several times, so the counts are smaller than scenario
e's.

    .venv/bin/python -m bench.memory_profile [--warmup 300] [--requests 2000] [--top 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, cast

from bench.loads import closed_loop, submit_and_stream
from bench.scenarios import STREAM_BODY
from bench.stack import BASE_ENV, rss_mb
from harness.processes import embedded_env, free_port


def configure(data_dir: Path) -> None:
    """The bench's embedded environment, set before Django loads."""
    os.environ |= {**BASE_ENV, **embedded_env(data_dir), "ORCHESTRATOR_WORKER_MODE": "embedded"}
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")


def drive(url: str, counts: tuple[int, int], report: dict[str, object]) -> None:
    """In a thread: warm up, snapshot, run the measured requests in fifths
    (noting the RSS after each: a plateau or a slope), snapshot."""
    warmup, measured = counts
    steps = [("warm-up", warmup)] + [("run", measured // 5)] * 5
    curve: list[float] = []
    report["curve"] = curve
    ran = 0
    for phase, count in steps:
        samples = asyncio.run(closed_loop([url], 16, submit_and_stream(STREAM_BODY), total=count))
        if samples.errors or samples.ok != count:
            report["problems"] = f"{phase}: {samples.ok}/{count} ok, {dict(samples.errors)}"
        ran += samples.ok if phase == "run" else 0
        time.sleep(1)  # let the engine's last writes and the streams' cleanup finish
        gc.collect()
        curve.append(rss_mb(os.getpid()))
        if phase == "warm-up" or len(curve) == len(steps):
            report[phase] = (tracemalloc.take_snapshot(), curve[-1], ran)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrator-memory-") as data_dir:
        configure(Path(data_dir))
        return profile(args)


def profile(args: argparse.Namespace) -> int:
    import django
    import uvicorn
    from django.core.management import call_command

    django.setup()
    call_command("migrate", "--noinput", verbosity=0)
    from orchestrator_site.asgi import application

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(application, port=port, lifespan="on", log_config=None, access_log=False)
    )
    report: dict[str, object] = {}

    def load() -> None:
        while not server.started:
            time.sleep(0.05)
        try:
            drive(f"http://127.0.0.1:{port}", (args.warmup, args.requests), report)
        finally:
            server.should_exit = True

    tracemalloc.start(12)
    threading.Thread(target=load, daemon=True).start()
    server.run()
    print_report(args, report)
    return 1 if "problems" in report or "run" not in report else 0


def print_report(args: argparse.Namespace, report: dict[str, object]) -> None:
    if "problems" in report:
        print(f"problems: {report['problems']}")
    if "run" not in report:
        return
    snapshot = tuple[Any, float, int]  # (tracemalloc snapshot, RSS MB, requests run)
    before, rss_before, _ = cast(snapshot, report["warm-up"])
    after, rss_after, ran = cast(snapshot, report["run"])
    stats = after.compare_to(before, "traceback")
    traced = sum(s.size_diff for s in stats) / 2**20
    per_10k = 10_000 / ran
    curve = " ".join(f"{mb:.1f}" for mb in report["curve"])  # type: ignore[attr-defined]
    print(
        f"embedded: {ran:,} requests after {args.warmup:,} of warm-up (16 connections)\n"
        f"RSS {rss_before:.1f} -> {rss_after:.1f} MB = {(rss_after - rss_before) * per_10k:.1f}"
        f" MB per 10k; traced by tracemalloc {traced * per_10k:+.1f} MB per 10k\n"
        f"RSS after the warm-up and each fifth: {curve}\n"
        "\nallocation sites that grew most, per 10k requests"
        " (the innermost frames outside site-packages):"
    )
    for stat in stats[: args.top]:
        print(
            f"  {stat.size_diff * per_10k / 2**20:+8.2f} MB"
            f" {stat.count_diff * per_10k:+9.0f} blocks"
        )
        for frame in [f for f in stat.traceback if "site-packages" not in f.filename][-3:]:
            print(f"      {frame.filename}:{frame.lineno}")
        print(f"      (innermost) {stat.traceback[-1].filename}:{stat.traceback[-1].lineno}")


if __name__ == "__main__":
    raise SystemExit(main())
