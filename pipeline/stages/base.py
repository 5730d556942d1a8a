from __future__ import annotations

from pipeline.context import PipelineContext


class Stage:
    """One step of the pipeline. ``name`` keys its timing on the request."""

    name = "stage"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        raise NotImplementedError
