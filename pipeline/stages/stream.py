from __future__ import annotations

from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


class StreamStage(Stage):
    """Flush the last buffered tokens so readers have every chunk before the end."""

    name = "stream"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        await ctx.sink.close()
        return ctx
