"""The Anthropic backend against a loopback server speaking the Messages stream format."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from harness.fake_llm_server import FakeLLMServer
from pipeline.backends.anthropic import AnthropicBackend
from pipeline.backends.base import BackendError, GenerationParams, Usage

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there general kenobi"},
]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer().start()
    yield server
    await server.stop()


def backend(url: str, model: str = "ok", **options) -> AnthropicBackend:  # type: ignore[no-untyped-def]
    return AnthropicBackend(
        name="anthropic", base_url=url, api_key="sk-ant", model=model, **options
    )


async def collect(b: AnthropicBackend) -> tuple[list[str], Usage]:
    usage = Usage()
    return [t async for t in b.stream(MESSAGES, GenerationParams(stop=["X"]), usage)], usage


async def test_streams_text_deltas_with_usage_and_stop_reason(upstream: FakeLLMServer) -> None:
    tokens, usage = await collect(backend(upstream.url))
    assert tokens == ["hello", " there", " general", " kenobi"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.finish_reason) == (
        13,
        4,
        "stop",  # Anthropic's end_turn, in OpenAI's words
    )


async def test_sends_a_messages_request_with_the_system_prompt_apart(
    upstream: FakeLLMServer,
) -> None:
    await collect(backend(upstream.url))
    request = upstream.requests[-1]
    assert request["path"] == "/v1/messages"
    assert request["headers"]["x-api-key"] == "sk-ant"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    body = request["body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "hello there general kenobi"}]
    assert body["stop_sequences"] == ["X"] and body["stream"] is True


async def test_an_error_event_raises_with_its_type(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "error-mid"))
    assert raised.value.code == "overloaded_error" and raised.value.retryable


async def test_http_errors_map_like_openai(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "429-once"))
    assert (raised.value.code, raised.value.retry_after) == ("rate_limited", 0.1)


async def test_a_stall_before_the_first_event_times_out(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "stall-first", first_token_timeout=0.3))
    assert raised.value.code == "timeout"


async def test_closing_the_stream_disconnects_within_a_second(upstream: FakeLLMServer) -> None:
    stream = backend(upstream.url, "slow").stream(MESSAGES, GenerationParams(), Usage())
    await anext(stream)
    closed_at = time.monotonic()
    await stream.aclose()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1)
    assert upstream.disconnected_at - closed_at < 1


async def test_a_stream_cut_before_the_upstream_counted_is_an_estimate(
    upstream: FakeLLMServer,
) -> None:
    usage = Usage()
    with pytest.raises(BackendError):
        async for _ in backend(upstream.url, "error-mid").stream(
            MESSAGES, GenerationParams(), usage
        ):
            pass
    assert (usage.completion_tokens, usage.estimated) == (2, True)
