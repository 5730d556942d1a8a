"""Scaled mode end to end: `serve` (uvicorn) + separate run_pipeline processes on PG + Redis."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

from inference.models import InferenceRequest, StreamChunk
from tests.services.conftest import Stack

pytestmark = pytest.mark.services


def prompt_for(i: int, words: int = 12) -> str:
    return f"request {i}: " + " ".join(f"tok{i}x{j}" for j in range(words))


async def submit_all(base_url: str, prompts: list[str]) -> list[str]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.post("/api/v1/infer", json={"prompt": p}) for p in prompts)
        )
    assert [r.status_code for r in responses] == [202] * len(prompts)
    return [r.json()["request_id"] for r in responses]


async def results_of(base_url: str, ids: list[str]) -> dict[str, dict]:
    async def one(client: httpx.AsyncClient, request_id: str) -> dict:
        for _ in range(30):  # each long-poll waits up to 10 s
            response = await client.get(f"/api/v1/result/{request_id}", params={"wait": 10})
            if response.status_code == 200:
                return response.json()
        raise AssertionError(f"{request_id} never finished")

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        bodies = await asyncio.gather(*(one(client, i) for i in ids))
    return dict(zip(ids, bodies, strict=True))


def assert_streamed_exactly_once(request_id: str, expected: str) -> InferenceRequest:
    row = InferenceRequest.objects.get(pk=request_id)
    chunks = list(StreamChunk.objects.filter(request_id=request_id).order_by("seq"))
    assert [c.seq for c in chunks] == list(range(len(chunks))), "gap or duplicate seq"
    assert {c.attempt for c in chunks} == {row.attempt}, "chunks from two attempts"
    assert "".join(c.text for c in chunks) == expected
    return row


def test_200_concurrent_requests_all_complete_once_in_order(stack: Stack, db_access) -> None:  # type: ignore[no-untyped-def]
    stack.start_worker(concurrency=50, token_delay=0.005)
    stack.start_worker(concurrency=50, token_delay=0.005)
    prompts = [prompt_for(i) for i in range(200)]
    ids = asyncio.run(submit_all(stack.base_url, prompts))
    results = asyncio.run(results_of(stack.base_url, ids))
    owners = set()
    for request_id, prompt in zip(ids, prompts, strict=True):
        assert results[request_id]["status"] == "completed", results[request_id]
        assert results[request_id]["result"] == prompt
        row = assert_streamed_exactly_once(request_id, prompt)
        assert row.attempt == 1
        owners.add(row.lease_owner)
    assert len(owners) >= 2, "both worker processes should have taken work"
    # 200 at once: the web process stored them in groups, fewer transactions than submits.
    groups = metric_values(httpx.get(f"{stack.base_url}/metrics").text, "orchestrator_submit_group")
    assert groups["_sum"] >= 200 and groups["_count"] < groups["_sum"]
    stack.stop_workers()


def metric_values(text: str, name: str) -> dict[str, float]:
    """``name``'s unlabelled series by suffix (``_sum``, ``_count``) in a scrape."""
    found = {}
    for line in text.splitlines():
        series, _, value = line.partition(" ")
        if series.startswith(name) and "{" not in series:
            found[series.removeprefix(name).removeprefix("_size")] = float(value)
    return found


def test_killing_a_worker_with_50_in_flight_loses_none(stack: Stack, db_access) -> None:  # type: ignore[no-untyped-def]
    doomed = stack.start_worker(concurrency=60, token_delay=0.1)  # ~2 s per request
    prompts = [prompt_for(1000 + i, words=20) for i in range(50)]
    ids = asyncio.run(submit_all(stack.base_url, prompts))
    deadline = time.monotonic() + 30
    while InferenceRequest.objects.filter(pk__in=ids, status="processing").count() < 50:
        assert time.monotonic() < deadline, "the worker never took all 50"
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    stack.start_worker(concurrency=60, token_delay=0.0)
    results = asyncio.run(results_of(stack.base_url, ids))
    for request_id, prompt in zip(ids, prompts, strict=True):
        assert results[request_id]["status"] == "completed"
        assert results[request_id]["result"] == prompt
        row = assert_streamed_exactly_once(request_id, prompt)
        assert row.attempt == 2, "each ran again exactly once after the kill"
    stack.stop_workers()


def test_health_checks_postgres_and_redis(stack: Stack) -> None:
    body = httpx.get(f"{stack.base_url}/health").json()
    assert body == {
        "status": "healthy",
        "checks": {"database": "ok", "channel_layer": "ok"},
        "worker_mode": "external",
        "version": body["version"],
    }


def test_cancel_reaches_the_worker_in_another_process(stack: Stack, db_access) -> None:  # type: ignore[no-untyped-def]
    worker_log = stack.logs / f"worker-{stack.started}.log"
    stack.start_worker(concurrency=4, token_delay=0.2)
    [request_id] = asyncio.run(submit_all(stack.base_url, [prompt_for(7, words=100)]))
    deadline = time.monotonic() + 20
    while InferenceRequest.objects.get(pk=request_id).last_seq < 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = httpx.post(f"{stack.base_url}/api/v1/requests/{request_id}/cancel/")
    assert response.json()["status"] == "cancelled"
    # The cancel crossed Redis to the worker process, which stopped generating.
    line = f"request {request_id} attempt 1 interrupted: cancelled"
    deadline = time.monotonic() + 5
    while line not in worker_log.read_text():
        assert time.monotonic() < deadline, "the worker never heard the cancel"
        time.sleep(0.05)
    row = InferenceRequest.objects.get(pk=request_id)
    assert row.status == "cancelled"
    assert StreamChunk.objects.filter(request_id=uuid.UUID(request_id)).count() == row.last_seq + 1
    stack.stop_workers()
