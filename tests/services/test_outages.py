"""Outages: a Redis restart loses no request or token; while PostgreSQL is down the
API answers 503 with Retry-After, and everything recovers by itself."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from harness.clients import Received, sse_read
from harness.outages import (
    forget_dead_connections,
    restart_redis,
    start_postgres,
    stop_postgres,
)
from tests.services.conftest import Stack

pytestmark = pytest.mark.services

WORDS = 40


def prompt_for(i: int) -> str:
    return f"outage {i}: " + " ".join(f"o{i}x{j}" for j in range(WORDS))


async def stream_through_a_redis_restart(stack: Stack, count: int) -> list[tuple[str, Received]]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120, limits=limits) as client:
        prompts = [prompt_for(i) for i in range(count)]
        submitted = await asyncio.gather(
            *(client.post("/api/v1/infer", json={"prompt": p}) for p in prompts)
        )
        ids = [r.json()["request_id"] for r in submitted]
        readers = [asyncio.create_task(sse_read(client, i, Received())) for i in ids]
        await asyncio.sleep(0.5)  # streams are under way
        await asyncio.to_thread(restart_redis)
        received = await asyncio.gather(*readers)
    return list(zip(prompts, received, strict=True))


def test_a_redis_restart_mid_stream_loses_no_request_or_token(stack: Stack) -> None:
    stack.start_worker(concurrency=30, token_delay=0.05)  # ~2 s per request
    stack.start_worker(concurrency=30, token_delay=0.05)
    for prompt, received in asyncio.run(stream_through_a_redis_restart(stack, 30)):
        assert received.final == {
            "event": "complete",
            "status": "done",
            "result": prompt,
            "finish_reason": "stop",
            "cache_status": "ineligible",
            "cache_source": None,
        }
        assert received.text == prompt
        assert received.seqs == list(range(WORDS + 2))
    # Submits and doorbells work again after the restart.
    again = httpx.post(f"{stack.base_url}/api/v1/infer", json={"prompt": "after redis"}).json()
    result = httpx.get(
        f"{stack.base_url}/api/v1/result/{again['request_id']}", params={"wait": 20}, timeout=30
    )
    assert result.json()["result"] == "after redis"
    stack.stop_workers()


def test_while_postgres_is_down_the_api_answers_503_with_retry_after(stack: Stack) -> None:
    stack.start_worker(concurrency=10)
    try:
        stop_postgres()
        submit = httpx.post(f"{stack.base_url}/api/v1/infer", json={"prompt": "x"}, timeout=30)
        assert submit.status_code == 503, submit.text
        assert int(submit.headers["Retry-After"]) > 0
        assert submit.json()["error"]["type"] == "service_unavailable"
        health = httpx.get(f"{stack.base_url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["checks"]["database"] != "ok"
    finally:
        start_postgres()
        forget_dead_connections()  # this test process's own pool
    deadline = time.monotonic() + 30
    while True:  # the web process reconnects by itself (CONN_HEALTH_CHECKS, pool)
        submit = httpx.post(
            f"{stack.base_url}/api/v1/infer", json={"prompt": "back again"}, timeout=30
        )
        if submit.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert submit.status_code == 202
    result = httpx.get(
        f"{stack.base_url}/api/v1/result/{submit.json()['request_id']}",
        params={"wait": 20},
        timeout=30,
    )
    assert result.json()["result"] == "back again"  # and the worker recovered too
    stack.stop_workers()
