"""Durable-submit load (scenario a) by wrk, or by the bench's own asyncio client.

wrk (Debian package ``wrk``) is preferred: written in C, it leaves nearly all
of the 2 cores to the servers. Without it the bench falls back to the raw
asyncio client in ``bench.loads``, which costs some CPU of its own; the
scenario's table says which one produced the numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.loads import closed_loop, submit

SCRIPT = Path(__file__).with_name("submit.lua")
REFUSED = (429, 503)


@dataclass
class SubmitRun:
    """One fixed-duration submit load, whichever generator ran it."""

    accepted: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def refused(self) -> int:
        return sum(self.statuses.get(status, 0) for status in REFUSED)

    @property
    def other(self) -> int:
        """Answers that are neither accepted nor a refusal, plus socket errors."""
        unexpected = (n for s, n in self.statuses.items() if s != 202 and s not in REFUSED)
        return sum(unexpected) + sum(self.errors.values())


def generator(choice: str) -> str:
    """``wrk`` if asked for or (``auto``) installed, else ``python``."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk (or --generator python)")
    return choice


def describe(name: str) -> str:
    if name == "wrk":
        return "wrk (C, Lua script bench/submit.lua)"
    return "bench's raw-asyncio HTTP/1.1 keep-alive client (Python, same box)"


def run_submit(
    name: str, urls: list[str], connections: int, seconds: float, body: dict
) -> SubmitRun:
    if name == "wrk":
        return _wrk(urls, connections, seconds, body)
    samples = asyncio.run(closed_loop(urls, connections, submit(body), seconds=seconds))
    return SubmitRun(
        accepted=samples.ok,
        seconds=samples.elapsed,
        p50_ms=samples.percentile_ms(50),
        p99_ms=samples.percentile_ms(99),
        statuses=dict(samples.statuses),
        errors=dict(samples.errors),
    )


def _wrk(urls: list[str], connections: int, seconds: float, body: dict) -> SubmitRun:
    targets = ",".join(urlsplit(url).netloc for url in urls)
    threads = max(1, min(connections, len(urls)))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(round(seconds), 1)}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        f"{urls[0]}/api/v1/infer",
    ]
    env = {**os.environ, "BENCH_TARGETS": targets, "BENCH_BODY": json.dumps(body)}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    statuses = {int(status): count for status, count in result["statuses"].items()}
    return SubmitRun(
        accepted=statuses.get(202, 0),
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        statuses=statuses,
        errors={kind: n for kind, n in result["errors"].items() if n},
    )
