"""The pipeline engine: claim, run, stream, cancel, fail, recover, shut down."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError
from django.utils import timezone

from inference import services
from inference.models import InferenceRequest, StreamChunk
from inference.streaming import Token, follow
from pipeline.worker import Engine
from tests.backends import EndlessBackend
from tests.conftest import asubmit, finished

pytestmark = pytest.mark.django_db(transaction=True)


def chunks_of(request_id) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    return list(
        StreamChunk.objects.filter(request_id=request_id).order_by("seq").values_list("seq", "text")
    )


async def first_token(request_id) -> None:  # type: ignore[no-untyped-def]
    async for event in follow(request_id):
        if isinstance(event, Token):
            return


async def test_a_submitted_request_completes_with_the_echoed_prompt(engine: Engine) -> None:
    request = await asubmit("What is Rust?")
    done = await finished(request.pk)
    assert done.status == "completed"
    assert done.result == "What is Rust?"
    assert done.attempt == 1
    assert done.backend_used == "echo"
    assert done.completion_tokens == 3
    stages = {"rag", "assemble", "inference", "post", "stream"}
    assert set(done.timings) >= stages | {"first_token", "queue_wait", "tokens_per_second"}
    assert done.timings["queue_wait"] >= 0 and done.timings["tokens_per_second"] > 0


async def test_tokens_are_stored_as_numbered_chunks_in_batches(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_CHUNK_BATCH_TOKENS = 4
    prompt = " ".join(f"word{i}" for i in range(10))
    request = await asubmit(prompt)
    await finished(request.pk)
    chunks = await database_sync_to_async(chunks_of)(request.pk)
    assert [seq for seq, _ in chunks] == list(range(10))
    assert "".join(text for _, text in chunks) == prompt


async def test_a_request_whose_doorbell_was_lost_still_runs(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def lost(*args, **kwargs):  # type: ignore[no-untyped-def]
        return None

    monkeypatch.setattr("inference.events.ring_doorbell", lost)
    request = await asubmit("nobody rang")
    assert (await finished(request.pk)).status == "completed"


async def test_cancelling_a_running_request_closes_the_backend_stream(engine: Engine) -> None:
    request = await asubmit("go on forever", backend="endless")
    await first_token(request.pk)
    cancelled = await database_sync_to_async(services.cancel_request)(request.pk)
    assert cancelled.status == "cancelled"
    await asyncio.wait_for(EndlessBackend.closed.wait(), timeout=2)
    row = await InferenceRequest.objects.aget(pk=request.pk)
    assert (row.status, row.error_code) == ("cancelled", "cancelled")


async def test_a_backend_error_fails_the_request_with_its_code(engine: Engine) -> None:
    request = await asubmit(backend="failing")
    done = await finished(request.pk)
    assert (done.status, done.error_code) == ("failed", "upstream_error")
    assert "upstream said no" in done.error


async def test_an_unexpected_exception_fails_the_request_not_the_worker(engine: Engine) -> None:
    broken = await asubmit(backend="exploding")
    assert (await finished(broken.pk)).error_code == "internal_error"
    healthy = await asubmit("still alive")
    assert (await finished(healthy.pk)).result == "still alive"


async def test_concurrency_is_bounded_by_the_setting(transactional_db, settings) -> None:  # type: ignore[no-untyped-def]
    from pipeline.host import PipelineHost
    from pipeline.worker import EngineConfig

    settings.ORCHESTRATOR_CONCURRENCY = 2
    host = PipelineHost(EngineConfig.from_settings())
    host.start()
    requests = [await asubmit("a b c d e f", backend="endless") for _ in range(4)]
    await first_token(requests[0].pk)
    await first_token(requests[1].pk)
    processing = await InferenceRequest.objects.filter(status="processing").acount()
    assert processing == 2 == host.engine.in_flight
    await host.stop(grace=0)


async def test_stopping_hands_in_flight_requests_back_to_the_queue(engine: Engine) -> None:
    request = await asubmit(backend="endless")
    await first_token(request.pk)
    await engine.stop(grace=0)
    row = await InferenceRequest.objects.aget(pk=request.pk)
    assert (row.status, row.lease_owner) == ("pending", "")


async def test_stopping_lets_in_flight_requests_finish_within_the_grace(engine: Engine) -> None:
    request = await asubmit("one two three four five", backend="slow-echo")
    await first_token(request.pk)
    await engine.stop(grace=5)
    row = await InferenceRequest.objects.aget(pk=request.pk)
    assert (row.status, row.result) == ("completed", "one two three four five")


async def test_a_lost_lease_stops_the_generation(engine: Engine) -> None:
    request = await asubmit(backend="endless")
    await first_token(request.pk)
    # Another worker took over: bump the attempt under this one's feet.
    await InferenceRequest.objects.filter(pk=request.pk).aupdate(attempt=99)
    await asyncio.wait_for(EndlessBackend.closed.wait(), timeout=5)
    row = await InferenceRequest.objects.aget(pk=request.pk)
    assert row.status == "processing" and row.attempt == 99  # untouched by the stale one


async def test_an_abandoned_request_is_reclaimed_and_completed(engine: Engine) -> None:
    # A worker claimed it and died: its lease has run out.
    request = await InferenceRequest.objects.acreate(
        prompt="left behind",
        session_id="s",
        backend="echo",
        status="processing",
        attempt=1,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    done = await finished(request.pk)
    assert (done.status, done.attempt, done.result) == ("completed", 2, "left behind")


async def test_a_worker_that_cannot_reach_the_database_stops_within_a_lease(
    engine: Engine, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Self-fencing: past its lease another worker may own the request, so a worker
    whose heartbeats keep failing stops generating on its own."""
    request = await asubmit(backend="endless")
    await first_token(request.pk)

    def unreachable(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise DatabaseError("connection refused")

    monkeypatch.setattr(InferenceRequest.objects, "heartbeat", unreachable)
    began = time.monotonic()
    await asyncio.wait_for(EndlessBackend.closed.wait(), timeout=10)
    stopped_after = time.monotonic() - began
    lease = engine.config.lease_seconds
    assert lease * 2 / 3 <= stopped_after <= lease + lease / 3 + 1
