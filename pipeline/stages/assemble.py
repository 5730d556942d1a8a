from __future__ import annotations

from django.conf import settings

from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


class AssembleStage(Stage):
    """Build the chat messages the backend receives: system prompt, then the user's."""

    name = "assemble"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        ctx.messages = [
            {"role": "system", "content": settings.ORCHESTRATOR_SYSTEM_PROMPT},
            {"role": "user", "content": ctx.request.prompt},
        ]
        return ctx
