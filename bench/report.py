"""Tables (Markdown, as the README quotes them) and the machine they ran on."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """One scenario's result: rows of measured values, each against its target.

    ``met`` is None where a row has no target. ``problems`` are errors (non-2xx
    answers, lost or wrong streams, crashed processes): any fails the run,
    whereas a missed target is only reported.
    """

    key: str
    title: str
    columns: list[str]
    notes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # e.g. --profile's hotspots
    seconds: float = 0.0

    def add(self, target: str = "", met: bool | None = None, **values: Any) -> None:
        self.rows.append({**values, "target": target, "met": met})

    def markdown(self) -> str:
        header = [*self.columns, "target", "met"]
        lines = [f"### {self.key}. {self.title} ({self.seconds:.0f} s)", ""]
        lines += [f"{note}  " for note in self.notes]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [_cell(row.get(column, "")) for column in self.columns]
            met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
            lines.append("| " + " | ".join([*cells, row["target"] or "—", met]) + " |")
        if self.details:
            lines += ["", "```", *self.details, "```"]
        lines += [f"\n**problems:** {problem}" for problem in self.problems]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "notes": self.notes,
            "rows": [{k: _json_value(v) for k, v in row.items()} for row in self.rows],
            "problems": self.problems,
            "details": self.details,
            "seconds": round(self.seconds, 1),
        }


def _json_value(value: Any) -> Any:
    """NaN (nothing measured) is not JSON: null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
