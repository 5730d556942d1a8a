"""Backends that misbehave on purpose, for worker tests (configured per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pipeline.backends.base import Backend, BackendError, GenerationParams, Usage


class FailingBackend(Backend):
    """Streams ``tokens_before`` tokens, then raises a BackendError."""

    model = "failing"

    def __init__(
        self, *, name: str, tokens_before: int = 0, retryable: bool = False, delay: float = 0.0
    ):
        super().__init__(name=name)
        self.tokens_before = tokens_before
        self.retryable = retryable
        self.delay = delay  # seconds before each token

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        for i in range(self.tokens_before):
            await asyncio.sleep(self.delay)
            usage.completion_tokens += 1
            yield f"t{i} "
        raise BackendError("upstream said no", code="upstream_error", retryable=self.retryable)


class ExplodingBackend(Backend):
    """Raises an unexpected exception, as a buggy backend would."""

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        raise RuntimeError("bug in backend")
        yield ""  # pragma: no cover - makes this an async generator


class EndlessBackend(Backend):
    """Streams a token every ``interval`` seconds until closed; records the close."""

    closed: asyncio.Event | None = None

    def __init__(self, *, name: str, interval: float = 0.01):
        super().__init__(name=name)
        self.interval = interval

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        EndlessBackend.closed = asyncio.Event()
        try:
            n = 0
            while True:
                await asyncio.sleep(self.interval)
                n += 1
                usage.completion_tokens += 1  # as a real backend counts as it streams
                yield f"w{n} "
        finally:
            EndlessBackend.closed.set()
