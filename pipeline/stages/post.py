from __future__ import annotations

from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text up to the earliest stop sequence (backends may overshoot one)."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class PostStage(Stage):
    """Turn the raw output into the stored result."""

    name = "post"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        ctx.result = cut_at_stop(ctx.output, ctx.request.params.stop).strip()
        return ctx
