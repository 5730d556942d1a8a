"""The README's fenced code blocks, for the tests that run them.

A block that is not meant to be run (it installs, deploys, needs Docker or
PostgreSQL, or is the test suite itself) says so with an HTML comment on the
line just before its fence::

    <!-- not-run: needs Docker -->
    ```bash

Every other block of a runnable language is run by ``tests/test_readme.py``
(bash, python) or ``tests/browser/test_readme_js.py`` (javascript).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.processes import ROOT

README = ROOT / "README.md"
README_URL = "http://127.0.0.1:8000"
RUNNABLE = {"bash", "python", "javascript"}
# Samples (of output, wire formats, layouts): nothing to run.
SAMPLES = {"", "json", "text"}

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent = len(opening["indent"])
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = NOT_RUN.match(before)
        body: list[str] = []
        index += 1
        while index < len(lines) and not FENCE.match(lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        line = index - len(body)
        blocks.append(
            Block(
                opening["lang"], "\n".join(body) + "\n", line, marker["reason"] if marker else None
            )
        )
        index += 1  # the closing fence
    return blocks


def blocks_to_run(lang: str) -> list[Block]:
    return [block for block in readme_blocks() if block.lang == lang and not block.not_run]
