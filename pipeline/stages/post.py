"""Post-processing: small steps from the raw output to the stored result."""

from __future__ import annotations

import re
from functools import cache

from django.conf import settings

from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to the earliest stop sequence (backends may overshoot one)."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def cap_length(text: str, max_chars: int) -> str:
    return text[:max_chars]


def tidy_whitespace(text: str) -> str:
    """Trim the ends, trailing spaces on lines, and runs of blank lines."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


@cache
def _compiled(rules: tuple[tuple[str, str], ...]) -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(pattern), replacement) for pattern, replacement in rules)


def redact(text: str, rules: list[list[str]]) -> str:
    """Apply ``[regex, replacement]`` rules in order."""
    for pattern, replacement in _compiled(tuple((p, r) for p, r in rules)):
        text = pattern.sub(replacement, text)
    return text


class PostStage(Stage):
    name = "post"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        text = cut_at_stop(ctx.output, ctx.request.params.stop)
        text = cap_length(text, settings.ORCHESTRATOR_MAX_OUTPUT_CHARS)
        text = tidy_whitespace(text)
        ctx.result = redact(text, settings.ORCHESTRATOR_REDACTIONS)
        return ctx
