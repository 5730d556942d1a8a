from __future__ import annotations

from pipeline.context import PipelineContext


class Stage:
    """One step of the pipeline. ``name`` keys its timing on the request."""

    name = "stage"
    # A feature flag that, off, skips the stage (recorded on the row).
    flag: str | None = None

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        raise NotImplementedError
