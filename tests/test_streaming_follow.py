"""follow(): every chunk once, in order, for early and late readers alike."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels.db import database_sync_to_async

from inference.models import InferenceRequest, Outcome
from inference.streaming import Finished, Reset, Token, follow
from pipeline.worker import Engine
from tests.conftest import asubmit, finished

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = " ".join(f"w{i}" for i in range(40))


async def read_all(request_id, after: int = -1) -> tuple[str, list[int], InferenceRequest]:  # type: ignore[no-untyped-def]
    text, seqs = "", []
    async for event in follow(request_id, after):
        if isinstance(event, Token):
            text += event.text
            seqs.append(event.seq)
        elif isinstance(event, Finished):
            return text, seqs, event.request
    raise AssertionError("stream ended without Finished")


async def test_a_live_reader_gets_every_token_in_order(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_CHUNK_BATCH_TOKENS = 3
    request = await asubmit(PROMPT, backend="slow-echo")
    text, seqs, final = await read_all(request.pk)
    assert text == PROMPT
    assert seqs == list(range(40))
    assert final.status == "completed"


async def test_a_late_reader_gets_the_whole_stream_then_the_end(engine: Engine) -> None:
    request = await asubmit(PROMPT)
    await finished(request.pk)
    text, seqs, final = await read_all(request.pk)
    assert (text, seqs, final.result) == (PROMPT, list(range(40)), PROMPT)


async def test_a_reader_resumes_after_a_seq(engine: Engine) -> None:
    request = await asubmit(PROMPT)
    await finished(request.pk)
    text, seqs, _ = await read_all(request.pk, after=9)
    assert seqs == list(range(10, 40))
    assert PROMPT.endswith(text)


async def test_many_concurrent_readers_each_get_exactly_the_stream(engine: Engine) -> None:
    request = await asubmit(PROMPT, backend="slow-echo")
    results = await asyncio.gather(*(read_all(request.pk) for _ in range(10)))
    assert all(text == PROMPT and seqs == list(range(40)) for text, seqs, _ in results)


async def test_a_reader_of_an_older_attempt_is_told_to_reset(transactional_db) -> None:  # type: ignore[no-untyped-def]
    request = await asubmit("a b")
    await InferenceRequest.objects.filter(pk=request.pk).aupdate(status="failed", attempt=2)
    events = [e async for e in follow(request.pk, after_seq=5, attempt=1)]
    assert isinstance(events[0], Reset) and events[0].attempt == 2
    assert isinstance(events[-1], Finished)


async def test_following_an_unknown_request_raises(transactional_db) -> None:  # type: ignore[no-untyped-def]
    import uuid

    with pytest.raises(InferenceRequest.DoesNotExist):
        async for _ in follow(uuid.uuid4()):
            pass


async def test_tokens_read_together_say_more_follows_so_writers_send_them_at_once() -> None:
    """A running request's read: every token but its last says ``more``; a finished
    one's: all do (the end follows), so a relay writes the tail and the end as one."""
    request = await asubmit("unused")
    claimed = await database_sync_to_async(InferenceRequest.objects.claim_next)("w", 30)
    assert claimed is not None and claimed.pk == request.pk
    await database_sync_to_async(claimed.append_chunks)(0, ["a", "b", "c"])
    events = follow(request.pk)
    running = [await anext(events) for _ in range(3)]
    assert [(t.text, t.more) for t in running] == [("a", True), ("b", True), ("c", False)]
    await events.aclose()

    outcome = Outcome(
        result="abcde",
        prompt_tokens=1,
        completion_tokens=5,
        timings={},
        backend_used="echo",
        tail_seq=3,
        tail=["d", "e"],
    )
    await database_sync_to_async(InferenceRequest.objects.complete)(
        request.pk, claimed.attempt, outcome
    )
    ended = [event async for event in follow(request.pk, after_seq=2)]
    assert [(e.text, e.more) for e in ended[:2]] == [("d", True), ("e", True)]
    assert isinstance(ended[2], Finished) and ended[2].request.result == "abcde"


async def test_events_that_arrive_after_their_reader_left_are_swept(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """channels_redis keeps, per channel, what arrives for a channel nobody receives
    on any more (a group event sent as its reader left): such buffers are dropped,
    a live reader's kept."""
    import collections

    from inference import streaming

    class Layer:  # the part of channels_redis's core layer the sweep looks at
        def __init__(self) -> None:
            self.receive_buffer: dict[str, list[str]] = collections.defaultdict(list)
            self.count = 0

        async def new_channel(self, prefix: str) -> str:
            self.count += 1
            return f"{prefix}.x!{self.count}"

        async def group_add(self, group: str, channel: str) -> None: ...

        async def group_discard(self, group: str, channel: str) -> None: ...

    layer = Layer()
    monkeypatch.setattr(streaming, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(streaming, "SWEEP_SECONDS", 0.0)
    async with streaming._subscription(uuid.uuid4()) as gone:
        pass
    layer.receive_buffer[gone].append("finished, too late")  # nobody will receive it
    layer.receive_buffer["worker.x!1"].append("not a reader's")
    async with streaming._subscription(uuid.uuid4()) as live:
        layer.receive_buffer[live].append("for a reader still here")
        async with streaming._subscription(uuid.uuid4()):
            pass  # its exit sweeps
        assert gone not in layer.receive_buffer
        assert layer.receive_buffer[live] == ["for a reader still here"]
        assert "worker.x!1" in layer.receive_buffer
