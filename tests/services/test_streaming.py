"""Streaming at scale: 50 SSE + 50 WebSocket clients at once, with drops and resumes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from harness.clients import Received, sse_read, ws_run
from tests.services.conftest import Stack

pytestmark = pytest.mark.services

WORDS = 25  # at 20 ms per token: ~0.5 s per request


def prompt_for(kind: str, i: int) -> str:
    return f"{kind} {i}: " + " ".join(f"{kind[0]}{i}x{j}" for j in range(WORDS))


async def sse_client(client: httpx.AsyncClient, prompt: str, drop: bool) -> Received:
    submitted = await client.post("/api/v1/infer", json={"prompt": prompt})
    request_id = submitted.json()["request_id"]
    received = await sse_read(client, request_id, Received(), stop_after=5 if drop else None)
    if drop:  # reconnect the way EventSource does: with Last-Event-ID
        assert received.final is None
        received = await sse_read(client, request_id, received)
    return received


async def all_clients(
    stack: Stack,
) -> tuple[list[tuple[str, Received]], list[tuple[str, Received]]]:
    ws_url = stack.base_url.replace("http", "ws") + "/api/v1/ws"
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60, limits=limits) as client:
        sse_prompts = [prompt_for("sse", i) for i in range(50)]
        ws_prompts = [prompt_for("ws", i) for i in range(50)]
        sse_runs = [sse_client(client, p, drop=i % 5 == 0) for i, p in enumerate(sse_prompts)]
        ws_runs = [
            ws_run(ws_url, stack.base_url, p, drop_after=5 if i % 5 == 0 else None)
            for i, p in enumerate(ws_prompts)
        ]
        results = await asyncio.gather(*sse_runs, *ws_runs)
    return (
        list(zip(sse_prompts, results[:50], strict=True)),
        list(zip(ws_prompts, results[50:], strict=True)),
    )


def test_50_sse_and_50_websocket_clients_each_get_exactly_their_text(stack: Stack) -> None:
    stack.start_worker(concurrency=60, token_delay=0.02)
    stack.start_worker(concurrency=60, token_delay=0.02)
    sse_results, ws_results = asyncio.run(all_clients(stack))
    for prompt, received in sse_results:
        assert received.text == prompt, "SSE client reassembled the wrong text"
        assert received.seqs == list(range(WORDS + 2))
        assert received.final == {
            "event": "complete",
            "status": "done",
            "result": prompt,
            "finish_reason": "stop",
            "cache_status": "ineligible",
            "cache_source": None,
        }
    for prompt, received in ws_results:
        assert received.text == prompt, "WebSocket client reassembled the wrong text"
        assert received.seqs == list(range(WORDS + 2))
        assert received.final["type"] == "result" and received.final["result"] == prompt
    stack.stop_workers()
