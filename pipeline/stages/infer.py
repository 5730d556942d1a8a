from __future__ import annotations

from contextlib import aclosing

from pipeline.backends import get_backend
from pipeline.context import PipelineContext
from pipeline.stages.base import Stage


class InferenceStage(Stage):
    """Stream the backend's tokens into the context's sink as they arrive."""

    name = "inference"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        backend = get_backend(ctx.request.backend)
        ctx.backend_used = backend.name
        parts: list[str] = []
        # aclosing: a cancelled attempt closes the backend stream at once.
        stream = backend.stream(ctx.messages, ctx.request.params, ctx.usage)
        async with aclosing(stream) as deltas:  # type: ignore[type-var]
            async for delta in deltas:
                if not parts:
                    ctx.mark("first_token")
                parts.append(delta)
                await ctx.sink.write(delta)
        ctx.output = "".join(parts)
        return ctx
