from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import replace

from django.conf import settings

from inference import metrics
from pipeline.backends import Backend, BackendError, fallback_chain
from pipeline.context import PipelineContext
from pipeline.resilience import CircuitBreaker, backoff_seconds, breaker_for
from pipeline.stages.base import Stage

logger = logging.getLogger(__name__)


class InferenceStage(Stage):
    """Stream the backend's tokens into the context's sink as they arrive.

    Shared resilience for every backend: retries with backoff before the first
    token, a circuit breaker per backend, then the backend's fallback chain.
    Once a token has streamed there is no retry: the attempt fails with
    ``stream_interrupted`` (a reader would otherwise see two answers spliced).
    """

    name = "inference"

    async def run(self, ctx: PipelineContext) -> PipelineContext:
        parts: list[str] = []
        last_error: BackendError | None = None
        for backend in fallback_chain(ctx.request.backend):
            breaker = breaker_for(backend.name)
            if not breaker.allow():
                last_error = BackendError(f"{backend.name}: circuit open", code="circuit_open")
                continue
            try:
                await self._with_retries(ctx, backend, breaker, parts)
            except BackendError as exc:
                if parts:
                    raise
                logger.warning("backend %s failed: %s", backend.name, exc.message)
                last_error = exc
                continue
            ctx.backend_used = backend.name
            ctx.output = "".join(parts)
            return ctx
        assert last_error is not None
        raise last_error

    async def _with_retries(
        self, ctx: PipelineContext, backend: Backend, breaker: CircuitBreaker, parts: list[str]
    ) -> None:
        retries = settings.ORCHESTRATOR_BACKEND_RETRIES
        attempt = 0
        while True:
            try:
                await self._stream(ctx, backend, parts)
            except BackendError as exc:
                breaker.record_failure()
                metrics.BACKEND_ERRORS.labels(backend.name, exc.code).inc()
                if parts:
                    raise BackendError(
                        f"{backend.name} failed after streaming began: {exc.message}",
                        code="stream_interrupted",
                        detail=exc.detail,
                    ) from exc
                if not exc.retryable or attempt >= retries or not breaker.allow():
                    raise
                metrics.BACKEND_RETRIES.labels(backend.name).inc()
                await asyncio.sleep(backoff_seconds(attempt, exc.retry_after))
                attempt += 1
                continue
            breaker.record_success()
            return

    async def _stream(self, ctx: PipelineContext, backend: Backend, parts: list[str]) -> None:
        params = ctx.request.params
        if backend.name != ctx.request.backend:  # a fallback runs its own model
            params = replace(params, model="")
        # aclosing: a cancelled attempt closes the backend stream at once.
        stream = backend.stream(ctx.messages, params, ctx.usage)
        async with aclosing(stream) as deltas:  # type: ignore[type-var]
            async for delta in deltas:
                if not parts:
                    ctx.mark("first_token")
                parts.append(delta)
                await ctx.sink.write(delta)
