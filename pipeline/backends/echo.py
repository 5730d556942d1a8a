"""A deterministic backend for tests and benchmarks: echoes the user prompt."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

from pipeline.backends.base import Backend, BackendError, GenerationParams, Usage

_WORD = re.compile(r"\s*\S+")


def split_words(text: str) -> list[str]:
    """Word tokens that concatenate back to ``text`` (minus trailing space)."""
    return _WORD.findall(text)


class EchoBackend(Backend):
    """Streams the last user message back word by word.

    ``token_delay`` (seconds) paces the tokens, to imitate a real model.
    """

    model = "echo"

    def __init__(self, *, name: str, token_delay: float = 0.0, failure_rate: float = 0.0) -> None:
        super().__init__(name=name)
        self.token_delay = token_delay
        # Chaos testing: this share of calls fails (retryably) before any token.
        self.failure_rate = failure_rate

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        if self.failure_rate and random.random() < self.failure_rate:
            raise BackendError("injected fault", code="injected_fault", retryable=True)
        users = [m["content"] for m in messages if m["role"] == "user"]
        prompt = users[-1] if users else messages[-1]["content"]
        words = split_words(prompt)
        usage.prompt_tokens = sum(len(split_words(m["content"])) for m in messages)
        usage.finish_reason = "length" if len(words) > params.max_tokens else "stop"
        for word in words[: params.max_tokens]:
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            else:
                await asyncio.sleep(0)  # stay cooperative on long prompts
            usage.completion_tokens += 1
            yield word
