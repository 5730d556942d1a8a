"""``--profile``: where a web process spends its CPU during scenario a.

py-spy (requirements-dev.txt) samples the process from outside, with
``--gil`` so only the thread running Python counts: idle pool threads parked
in ``queue.get`` would otherwise swamp the picture. The collapsed stacks are
kept (``var/bench/profile-*.txt``: flamegraph.pl or speedscope.app read them)
and summarised by package and function.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")
_LINE = re.compile(r":\d+\)$")


@contextlib.contextmanager
def recording(pid: int, output: Path, seconds: float) -> Iterator[None]:
    """Sample ``pid`` for ``seconds`` while the block runs (no-op without py-spy)."""
    if not PY_SPY.exists():
        print(f"--profile: {PY_SPY} is missing (pip install -r requirements-dev.txt)")
        yield
        return
    command = [str(PY_SPY), "record", "--pid", str(pid), "--gil", "--rate", "100"]
    command += ["--format", "raw", "--duration", str(max(int(seconds), 1)), "-o", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.wait(seconds + 30)


PROJECT = ("inference/", "pipeline/", "orchestrator_site/")
COMMANDS = "/management/commands/"  # the process's root frame: 100%, says nothing


def hotspots(path: Path, top: int = 10) -> list[str]:
    """Lines of "share  name": where the samples are, by package and by function
    (self time), and which of the project's own functions they are under."""
    if not path.exists():
        return [f"no profile at {path}"]
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    project: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")[1:]]
        if not frames:
            continue
        samples = int(count)
        total += samples
        packages[package(frames[-1])] += samples
        functions[frames[-1]] += samples
        for frame in {f for f in frames if source(f).startswith(PROJECT) and COMMANDS not in f}:
            project[frame] += samples
    if not total:
        return [f"no samples in {path}"]
    return [
        f"{total} samples (thread holding the GIL); self time by package:",
        *_shares(packages, total, top),
        "self time by function:",
        *_shares(functions, total, top),
        "inclusive, the project's own functions:",
        *_shares(project, total, top),
    ]


def _shares(counts: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {n / total:6.1%}  {name}" for name, n in counts.most_common(top)]


def source(frame: str) -> str:
    """``"name (path/file.py)"`` -> ``"path/file.py"``."""
    return frame.rpartition(" (")[2].rstrip(")")


def package(frame: str) -> str:
    """The frame's top-level package (two levels for Django), or stdlib module."""
    parts = source(frame).removesuffix(".py").split("/")
    return ".".join(parts[:2]) if parts[0] == "django" and len(parts) > 2 else parts[0]
