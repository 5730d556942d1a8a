"""ChunkWriter: batches tokens into fenced chunk writes plus one event per batch."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from inference.models import InferenceRequest, Outcome, StreamChunk
from inference.streaming import Token, follow
from pipeline.chunks import ChunkWriter, LeaseLost
from tests.conftest import submit

pytestmark = pytest.mark.django_db(transaction=True)


async def claimed() -> InferenceRequest:
    await database_sync_to_async(submit)()
    return await database_sync_to_async(InferenceRequest.objects.claim_next)("w", 30)


async def stored() -> list[tuple[int, str]]:
    return [(c.seq, c.text) async for c in StreamChunk.objects.order_by("seq")]


async def test_a_full_batch_is_written_at_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    events = []

    async def record(request_id, attempt, last_seq):  # type: ignore[no-untyped-def]
        events.append(last_seq)

    monkeypatch.setattr("inference.events.notify_chunks", record)
    writer = ChunkWriter(await claimed(), max_tokens=3, max_delay=60)
    for token in "abcdefgh":
        await writer.write(token)
    assert await stored() == [(i, t) for i, t in enumerate("abcdefg")]
    await writer.close()
    assert await stored() == [(i, t) for i, t in enumerate("abcdefgh")]
    assert events == [0, 3, 6, 7]  # the first token alone, then one per batch


async def test_the_first_token_is_written_at_once() -> None:
    """Time to first token is not held for the batch window."""
    writer = ChunkWriter(await claimed(), max_tokens=100, max_delay=60)
    await writer.write("first")
    await writer.write("second")
    assert await stored() == [(0, "first")]
    await writer.close()


async def test_a_slow_trickle_is_flushed_within_the_delay() -> None:
    writer = ChunkWriter(await claimed(), max_tokens=100, max_delay=0.05)
    await writer.write("lonely")
    for _ in range(100):
        if await stored():
            break
        await asyncio.sleep(0.01)
    assert await stored() == [(0, "lonely")]
    await writer.close()


async def test_finish_leaves_the_last_batch_to_the_completion(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """After the Stream stage's finish() nothing flushes the buffer (not even a
    timer already running): the completion commits it with the terminal status,
    and a reader that sees the end has every token."""
    events = []

    async def record(request_id, attempt, last_seq):  # type: ignore[no-untyped-def]
        events.append(last_seq)

    monkeypatch.setattr("inference.events.notify_chunks", record)
    request = await claimed()
    writer = ChunkWriter(request, max_tokens=100, max_delay=0.02)
    for token in ("a", "b", "c"):
        await writer.write(token)  # "a" at once; "b", "c" wait for the timer
    await writer.finish()
    await asyncio.sleep(0.05)  # past the timer's delay
    assert await stored() == [(0, "a")] and events == [0]
    assert writer.tail() == (1, ["b", "c"])

    outcome = Outcome(
        result="abc",
        prompt_tokens=1,
        completion_tokens=3,
        timings={},
        backend_used="echo",
        tail_seq=1,
        tail=["b", "c"],
    )
    complete = database_sync_to_async(InferenceRequest.objects.complete)
    assert await complete(request.pk, request.attempt, outcome) == []
    assert await stored() == [(0, "a"), (1, "b"), (2, "c")]
    row = await InferenceRequest.objects.aget(pk=request.pk)
    assert (row.status, row.last_seq) == ("completed", 2)
    tokens = [e.text async for e in follow(request.pk) if isinstance(e, Token)]
    assert "".join(tokens) == "abc"


async def test_a_fenced_out_completion_writes_no_tail() -> None:
    request = await claimed()
    await InferenceRequest.objects.filter(pk=request.pk).aupdate(status="cancelled")
    outcome = Outcome(
        result="x",
        prompt_tokens=1,
        completion_tokens=1,
        timings={},
        backend_used="echo",
        tail=["x"],
    )
    complete = database_sync_to_async(InferenceRequest.objects.complete)
    assert await complete(request.pk, request.attempt, outcome) is None
    assert await stored() == []


async def test_writing_after_the_lease_is_lost_raises() -> None:
    request = await claimed()
    writer = ChunkWriter(request, max_tokens=1, max_delay=60)
    await InferenceRequest.objects.filter(pk=request.pk).aupdate(status="cancelled")
    with pytest.raises(LeaseLost):
        await writer.write("x")
    assert await stored() == []


async def test_a_burst_of_submits_rings_the_doorbell_twice(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Once at its start and once after its end: no submit is left unannounced."""
    from inference import events

    rings = []

    async def ring(request_id=None) -> None:  # type: ignore[no-untyped-def]
        rings.append(asyncio.get_running_loop().time())

    monkeypatch.setattr(events, "ring_doorbell", ring)
    doorbell = events.CoalescingDoorbell(window=0.05)
    for _ in range(10):
        await doorbell.ring()
    assert len(rings) == 1
    await asyncio.sleep(0.1)
    assert len(rings) == 2
    await asyncio.sleep(0.06)
    await doorbell.ring()  # a quiet spell: rings at once again
    assert len(rings) == 3
