"""The echo backend: deterministic, paced, honours max_tokens."""

from __future__ import annotations

import time

from pipeline.backends import get_backend
from pipeline.backends.base import GenerationParams, Usage
from pipeline.backends.echo import EchoBackend, split_words

MESSAGES = [
    {"role": "system", "content": "sys prompt"},
    {"role": "user", "content": "the quick brown fox"},
]


async def collect(backend: EchoBackend, params: GenerationParams) -> tuple[list[str], Usage]:
    usage = Usage()
    return [t async for t in backend.stream(MESSAGES, params, usage)], usage


def test_split_words_round_trips_the_text() -> None:
    text = "  two  spaces\nand lines "
    assert "".join(split_words(text)) == text.rstrip()


async def test_echo_streams_the_user_prompt_word_by_word() -> None:
    tokens, usage = await collect(EchoBackend(name="e"), GenerationParams())
    assert tokens == ["the", " quick", " brown", " fox"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.finish_reason) == (6, 4, "stop")


async def test_echo_stops_at_max_tokens() -> None:
    tokens, usage = await collect(EchoBackend(name="e"), GenerationParams(max_tokens=2))
    assert tokens == ["the", " quick"]
    assert usage.finish_reason == "length"


async def test_echo_paces_tokens_by_its_delay() -> None:
    began = time.monotonic()
    await collect(EchoBackend(name="e", token_delay=0.02), GenerationParams())
    assert time.monotonic() - began >= 4 * 0.02


def test_backends_are_built_once_per_process_by_name() -> None:
    assert get_backend("echo") is get_backend("echo")
    assert get_backend().name == "echo"
