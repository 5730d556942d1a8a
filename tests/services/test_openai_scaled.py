"""``/v1`` in the scaled mode: the official SDK against web processes on
PostgreSQL + Redis with separate workers, and a dropped stream resumed on
*another* web process (the detach mark lives in the database, not in memory)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from harness.clients import Received, sse_read
from harness.processes import free_port, manage, running, wait_until_serving
from tests.services.conftest import Stack

pytestmark = pytest.mark.services

GRACE = 5.0  # the default disconnect grace


@pytest.fixture
def workers(stack: Stack) -> Iterator[None]:
    stack.start_worker(concurrency=20, token_delay=0.05)
    yield
    stack.stop_workers()


@pytest.fixture
def second_web(stack: Stack) -> Iterator[str]:
    port = free_port()
    args = ("serve", "--host", "127.0.0.1", "--port", str(port))
    web = manage(*args, env=stack.env, log=stack.logs / "web-2.log")
    with running(web):
        wait_until_serving(f"http://127.0.0.1:{port}", web)
        yield f"http://127.0.0.1:{port}"


def status(base_url: str, request_id: str) -> str:
    return httpx.get(f"{base_url}/api/v1/status/{request_id}").json()["status"]


def words(n: int) -> str:
    return " ".join(f"s{i}" for i in range(n))


@pytest.mark.usefixtures("workers")
def test_the_sdk_completes_and_streams_through_the_scaled_stack(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused")
    prompt = words(8)
    messages = [{"role": "user", "content": prompt}]
    completion = client.chat.completions.create(model="echo", messages=messages)
    assert completion.choices[0].message.content == prompt
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == prompt
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def drop_after_first_token(base_url: str, prompt: str) -> str:
    body = {"model": "echo", "messages": [{"role": "user", "content": prompt}], "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if '"content"' in line:
                return r.headers["x-orchestrator-request-id"]
    raise AssertionError("no token came")


@pytest.mark.usefixtures("workers")
def test_a_stream_dropped_on_one_web_process_is_resumed_on_another(
    stack: Stack, second_web: str
) -> None:
    prompt = words(160)  # 8 s at 50 ms a token: longer than the grace
    request_id = drop_after_first_token(stack.base_url, prompt)

    async def resume() -> Received:
        async with httpx.AsyncClient(base_url=second_web, timeout=30) as client:
            return await sse_read(client, request_id, Received())

    received = asyncio.run(resume())
    assert received.text == prompt
    assert received.final is not None and received.final["event"] == "complete"
    assert status(stack.base_url, request_id) == "completed"


@pytest.mark.usefixtures("workers")
def test_a_stream_nobody_resumes_is_cancelled_after_the_grace(stack: Stack) -> None:
    request_id = drop_after_first_token(stack.base_url, words(400))  # 20 s of tokens
    dropped = time.monotonic()
    while status(stack.base_url, request_id) != "cancelled":
        assert time.monotonic() - dropped < GRACE + 2, "not cancelled after the grace"
        time.sleep(0.2)
    assert time.monotonic() - dropped > GRACE - 0.5  # ...and not before it
