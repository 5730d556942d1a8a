"""The OpenAI-compatible backend against a loopback server speaking the wire format."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from harness.fake_llm_server import FakeLLMServer
from harness.processes import free_port
from pipeline.backends.base import BackendError, GenerationParams, Usage
from pipeline.backends.openai_compat import OpenAICompatBackend

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "the quick brown fox"},
]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer().start()
    yield server
    await server.stop()


def backend(url: str, model: str = "ok", **options) -> OpenAICompatBackend:  # type: ignore[no-untyped-def]
    options.setdefault("first_token_timeout", 2.0)
    return OpenAICompatBackend(
        name="openai", base_url=f"{url}/v1", api_key="sk-test", model=model, **options
    )


async def collect(
    b: OpenAICompatBackend, params: GenerationParams | None = None
) -> tuple[list[str], Usage]:
    usage = Usage()
    return [t async for t in b.stream(MESSAGES, params or GenerationParams(), usage)], usage


async def test_streams_deltas_then_reads_the_usage_chunk(upstream: FakeLLMServer) -> None:
    tokens, usage = await collect(backend(upstream.url))
    assert tokens == ["the", " quick", " brown", " fox"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.finish_reason) == (11, 4, "stop")


async def test_sends_the_chat_completions_request(upstream: FakeLLMServer) -> None:
    b = backend(upstream.url, headers={"X-Team": "ml"})
    await collect(b, GenerationParams(max_tokens=3, temperature=0.2, top_p=0.9, stop=["END"]))
    request = upstream.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["headers"]["x-team"] == "ml"
    body = request["body"]
    assert body["messages"] == MESSAGES and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (
        3,
        0.2,
        0.9,
        ["END"],
    )
    assert body["stream_options"] == {"include_usage": True}
    assert "priority" not in body  # only when asked to forward it


async def test_forwards_the_priority_in_vllm_polarity_when_asked(upstream: FakeLLMServer) -> None:
    """vLLM schedules lower first: our high (9) is its -4, our background (0) its 5."""
    b = backend(upstream.url, forward_priority=True)
    for native, upstream_priority in [(9, -4), (5, 0), (0, 5)]:
        await collect(b, GenerationParams(priority=native))
        assert upstream.requests[-1]["body"]["priority"] == upstream_priority


async def test_a_mid_stream_error_object_raises(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "error-mid"))
    assert raised.value.code == "upstream_error"
    # The upstream's words are kept for the log and the admin, not the caller.
    assert raised.value.detail == "model overloaded"
    assert "overloaded" not in raised.value.message


async def test_429_is_retryable_and_carries_retry_after(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "429-once"))
    assert (raised.value.code, raised.value.retryable, raised.value.retry_after) == (
        "rate_limited",
        True,
        0.1,
    )


async def test_a_500_is_retryable(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "500"))
    assert (raised.value.code, raised.value.retryable) == ("upstream_http_500", True)


async def test_a_stall_before_the_first_token_times_out(upstream: FakeLLMServer) -> None:
    began = time.monotonic()
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "stall-first", first_token_timeout=0.3))
    assert raised.value.code == "timeout" and raised.value.retryable
    assert time.monotonic() - began < 2


async def test_a_stall_mid_stream_hits_the_total_timeout(upstream: FakeLLMServer) -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(upstream.url, "stall-mid", total_timeout=0.5))
    assert raised.value.code == "timeout"


async def test_an_unreachable_server_is_a_retryable_connect_error() -> None:
    with pytest.raises(BackendError) as raised:
        await collect(backend(f"http://127.0.0.1:{free_port()}"))
    assert (raised.value.code, raised.value.retryable) == ("connect_error", True)


async def test_closing_the_stream_disconnects_from_the_upstream_at_once(
    upstream: FakeLLMServer,
) -> None:
    stream = backend(upstream.url, "slow").stream(MESSAGES, GenerationParams(), Usage())
    assert await anext(stream) == "the"
    closed_at = time.monotonic()
    await stream.aclose()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1)
    assert upstream.disconnected_at - closed_at < 1


def test_the_fake_server_speaks_the_format_the_official_sdk_reads() -> None:
    """Guard for the fake itself: the openai SDK parses its stream the same way."""
    import openai

    async def run() -> list[str]:
        server = await FakeLLMServer().start()
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-test")
        stream = await client.chat.completions.create(
            model="ok", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        texts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await server.stop()
        return texts

    assert "".join(asyncio.run(run())) == "the quick brown fox"


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
