"""``make bench``: the whole benchmark suite of DESIGN §12, one table per scenario.

    .venv/bin/python -m bench.run [--smoke] [--only a,b] [--generator auto|wrk|python]
                                  [--profile] [--json PATH]

  a. durable submit throughput and latency (POST /api/v1/infer -> 202)
  b. orchestration overhead: submit -> the whole answer with the echo backend at 0 ms/token
     (native SSE and long-poll, /v1/chat/completions streamed and not)
  c. time to first token added over an OpenAI-compatible upstream's own (SSE, WebSocket, /v1)
  d. WebSocket capacity of one web process: KB per idle socket, then many streaming at once
  e. memory growth per 10,000 requests (web, worker, embedded server)
  f. local model tokens/s through the pipeline vs llama-cpp-python direct
  g. response cache: repeated temperature-0 prompts, latency of a miss vs a hit and the
     share of backend calls saved (embedded; every other scenario bypasses the cache)
  h. fairness: one API key floods at 5x capacity while another sends 5%: the small
     key's queue wait vs idle, the flood's goodput, per-tier waits (scaled)
  i. bulk submit: POST /api/v1/infer/batch of 1,000 prompts, prompts accepted per second

It starts what it measures itself, as real processes: **embedded** (one
``manage.py serve`` with the worker inside, SQLite, in-memory layer) and
**scaled** (``manage.py serve`` x2 + ``manage.py run_pipeline`` x2 on the local
PostgreSQL and Redis db 14). Load generators run apart from the servers: wrk
for scenario a when installed (``apt-get install wrk``; else the bench's
raw-asyncio HTTP/1.1 client, and the table says which), and in this process
that raw client for SSE and the ``websockets`` client. Results go to stdout
(Markdown) and ``var/bench/latest.json`` (``latest-smoke.json``, ``latest-ab.json``
for smoke and partial runs); server logs to ``var/bench/logs/``. ``--profile``
adds py-spy hotspots of a web process to scenario a.

``--smoke`` runs every scenario with tiny counts (seconds of load each; starting
the servers is most of its time), so CI keeps the code paths alive. The exit
status is non-zero if any scenario *errored* (a non-2xx answer, a lost or wrong
stream, a crashed process); missing a target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.report import Table, machine
from bench.scenarios import FULL, SCENARIOS, SMOKE, Options
from bench.stack import (
    ROOT,
    Workspace,
    check_services,
    environment_summary,
    raise_open_files,
)
from bench.wrk import describe, generator

OUTPUT = ROOT / "var" / "bench"
# Scenarios that need neither PostgreSQL nor Redis.
EMBEDDED_ONLY = {"f", "g"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks, not numbers")
    parser.add_argument("--only", default="", help="comma-separated scenarios, e.g. a,b")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--json", type=Path, default=None, help="default: var/bench/latest[-smoke][-abc].json"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the first web process during scenario a's busiest rows (var/bench/)",
    )
    args = parser.parse_args(argv)
    chosen = [key.strip() for key in args.only.split(",") if key.strip()] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(SCENARIOS)}")
    args.only = chosen
    # latest.json is always a complete full run; smoke and partial runs get their own.
    subset = "" if set(chosen) == set(SCENARIOS) else "-" + "".join(chosen)
    args.json = args.json or OUTPUT / f"latest{'-smoke' if args.smoke else ''}{subset}.json"
    return args


def run_scenario(key: str, workspace: Workspace, args: argparse.Namespace, tool: str) -> Table:
    """One scenario; an exception becomes the table's problem, not the run's end."""
    plan = SMOKE if args.smoke else FULL
    options = Options(tool, OUTPUT if args.profile else None)
    began = time.monotonic()
    try:
        table = SCENARIOS[key](workspace, plan, options)
    except Exception as exc:
        table = Table(key, SCENARIOS[key].__name__.replace("_", " "), [])
        table.problems.append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    table.seconds = time.monotonic() - began
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every child process and database is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tool = generator(args.generator)
    if set(args.only) - EMBEDDED_ONLY:
        check_services()
    sockets = (SMOKE if args.smoke else FULL).idle_sockets
    open_files = raise_open_files(sockets * 2 + 1000)
    info = machine()
    print(
        f"# Prompt Orchestrator benchmarks ({'smoke' if args.smoke else 'full'})\n\n"
        f"{info['nproc']} cores, {info['cpu']}, Python {info['python']}, {info['platform']}; "
        f"RLIMIT_NOFILE {open_files}\n"
        f"Servers: {environment_summary()}; submit load: {describe(tool)}\n",
        flush=True,
    )
    if args.smoke:
        print("Smoke run: tiny counts check that every path works; the numbers mean nothing.\n")
    began = time.monotonic()
    tables: list[Table] = []
    workspace = Workspace(OUTPUT / "logs")
    try:
        for key in args.only:
            tables.append(run_scenario(key, workspace, args, tool))
            print(tables[-1].markdown() + "\n", flush=True)
    finally:
        workspace.close()
    total = time.monotonic() - began
    write_json(args, info, tool, tables, total)
    failed = [t.key for t in tables if t.problems]
    print(f"Total {total:.0f} s. Results: {args.json}.", end=" ")
    print(f"Scenarios with problems: {', '.join(failed)}." if failed else "No problems.")
    return 1 if failed else 0


def write_json(
    args: argparse.Namespace, info: dict[str, Any], tool: str, tables: list[Table], total: float
) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "servers": environment_summary(),
        "submit_generator": describe(tool),
        "seconds": round(total, 1),
        "scenarios": {table.key: table.as_json() for table in tables},
    }
    args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # cleaned up on the way out; no traceback
        sys.exit(130)
