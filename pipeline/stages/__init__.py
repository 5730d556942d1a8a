"""Pipeline stages: small classes, one async ``run`` over a PipelineContext."""

from __future__ import annotations

import time
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from inference import flags
from pipeline.context import PipelineContext
from pipeline.stages.base import Stage

__all__ = ["Stage", "configured_stages", "run_stages"]


@cache
def configured_stages() -> tuple[Stage, ...]:
    """The stages named in ``settings.ORCHESTRATOR_STAGES``, built once."""
    return tuple(import_string(path)() for path in settings.ORCHESTRATOR_STAGES)


async def run_stages(ctx: PipelineContext, stages: tuple[Stage, ...]) -> PipelineContext:
    """Run each stage in order, recording its duration in seconds; a stage whose
    feature flag is off for this request's key is skipped, and that recorded.
    Once a stage has answered the request (the cache), the rest do not run."""
    for stage in stages:
        if stage.flag and not await flags.aenabled(stage.flag, ctx.request.api_key_id):
            ctx.skipped.append(stage.name)
            continue
        began = time.monotonic()
        ctx = await stage.run(ctx)
        ctx.timings[stage.name] = round(time.monotonic() - began, 6)
        if ctx.answered:
            break
    return ctx
