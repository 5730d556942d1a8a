from __future__ import annotations

from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


class StreamStage(Stage):
    """End the token stream: the last buffered tokens are committed with the
    request's completion (``Outcome.tail``), so readers still have every chunk by
    the end, one transaction and one wake-up sooner than a flush before it."""

    name = "stream"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        await ctx.sink.finish()
        return ctx
