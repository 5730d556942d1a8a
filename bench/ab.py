"""A/B: our scaled stack at two revisions, measured in turns in one run.

    .venv/bin/python -m bench.ab BASE [HEAD] [--rounds 2] [--seconds 10]

Each revision is checked out into ``var/ab/<commit>`` (a git worktree; HEAD
defaults to this working tree, uncommitted changes included) and served by
``bench.peers --only ours``, this tree's bench code for both sides, with
``BENCH_SERVER_TREE`` pointing at the revision's checkout. The sides take turns
(A B, then B A, ...), so the drift of a shared box falls on both. Prints, per
load, each side's median rate, CPU per request and p99 over the rounds, and the
ratio head/base.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.stack import ROOT

OUTPUT = ROOT / "var" / "ab"


def checkout(revision: str) -> Path:
    """A worktree of ``revision`` under var/ab (made once, reused)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = OUTPUT / commit[:12]
    if not (tree / "manage.py").exists():
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--force", str(tree), commit],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return tree


def measure(tree: Path, seconds: float, output: Path) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "bench.peers", "--only", "ours", "--seconds", str(seconds)]
    command += ["--json", str(output)]
    env = {**os.environ, "BENCH_SERVER_TREE": str(tree)}
    subprocess.run(command, cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL)
    rows: list[dict[str, Any]] = json.loads(output.read_text())["table"]["rows"]
    return [row for row in rows if row.get("per second") is not None]


def median(rows: list[dict[str, Any]], column: str) -> float:
    values = [row[column] for row in rows if row.get(column) is not None]
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the revision to compare against, e.g. main~3")
    parser.add_argument("head", nargs="?", default="", help="default: this working tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10, help="per measured load")
    args = parser.parse_args(argv)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    trees = {"base": checkout(args.base), "head": checkout(args.head) if args.head else ROOT}
    runs: dict[str, list[list[dict[str, Any]]]] = {"base": [], "head": []}
    for number in range(args.rounds):
        for side in ("base", "head") if number % 2 == 0 else ("head", "base"):
            print(f"round {number + 1}: {side} ({trees[side]})", flush=True)
            output = OUTPUT / f"{side}-{number}.json"
            runs[side].append(measure(trees[side], args.seconds, output))
    print(f"\nA/B, {args.rounds} rounds of {args.seconds:g} s per load, medians:\n")
    columns = ["load", "system", "base /s", "head /s", "ratio", "base CPU ms", "head CPU ms"]
    columns += ["base p99 ms", "head p99 ms"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for index, row in enumerate(runs["head"][0]):
        same = {side: [run[index] for run in runs[side]] for side in runs}
        base, head = median(same["base"], "per second"), median(same["head"], "per second")
        cells = [row["load"], row["system"], f"{base:,.1f}", f"{head:,.1f}", f"{head / base:.2f}x"]
        cells += [f"{median(same[side], 'CPU ms/req'):.1f}" for side in ("base", "head")]
        cells += [f"{median(same[side], 'p99 ms'):,.0f}" for side in ("base", "head")]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
