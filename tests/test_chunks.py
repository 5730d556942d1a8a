"""ChunkWriter: batches tokens into fenced chunk writes plus one event per batch."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from inference.models import InferenceRequest, StreamChunk
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

    monkeypatch.setattr("pipeline.events.notify_chunks", record)
    writer = ChunkWriter(await claimed(), max_tokens=3, max_delay=60)
    for token in "abcdefg":
        await writer.write(token)
    assert await stored() == [(i, t) for i, t in enumerate("abcdef")]
    await writer.close()
    assert await stored() == [(i, t) for i, t in enumerate("abcdefg")]
    assert events == [2, 5, 6]  # one event per batch, never per token


async def test_a_slow_trickle_is_flushed_within_the_delay() -> None:
    writer = ChunkWriter(await claimed(), max_tokens=100, max_delay=0.05)
    await writer.write("lonely")
    for _ in range(100):
        if await stored():
            break
        await asyncio.sleep(0.01)
    assert await stored() == [(0, "lonely")]
    await writer.close()


async def test_writing_after_the_lease_is_lost_raises() -> None:
    request = await claimed()
    writer = ChunkWriter(request, max_tokens=1, max_delay=60)
    await InferenceRequest.objects.filter(pk=request.pk).aupdate(status="cancelled")
    with pytest.raises(LeaseLost):
        await writer.write("x")
    assert await stored() == []
