from __future__ import annotations

from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


class RagStage(Stage):
    """Retrieval-augmented generation.

    There is no document store yet, so there is nothing to retrieve: the stage
    records an empty passage list (and its time) so the timeline stays complete.
    """

    name = "rag"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        ctx.passages = []
        return ctx
