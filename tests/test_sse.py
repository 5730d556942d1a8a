"""GET /api/v1/stream/<id>: Server-Sent Events per the contract."""

from __future__ import annotations

import uuid

import pytest
from channels.layers import get_channel_layer

from inference import events as pipeline_events
from inference.models import InferenceRequest
from pipeline.worker import Engine
from tests.conftest import asubmit, finished
from tests.sse import SSEClient, seqs_of, text_of

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = " ".join(f"w{i}" for i in range(30))


async def test_a_finished_request_replays_every_token_then_complete(engine: Engine) -> None:
    request = await asubmit(PROMPT)
    await finished(request.pk)
    client = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    assert client.status == 200
    assert client.response_headers[b"content-type"].startswith(b"text/event-stream")
    assert client.response_headers[b"cache-control"] == b"no-cache"
    assert client.response_headers[b"x-accel-buffering"] == b"no"
    events = await client.events()
    assert client.raw.startswith("retry: ")
    assert events[0].event == "start" and events[0].data == {"request_id": str(request.pk)}
    assert seqs_of(events) == list(range(30))
    assert [e.id for e in events if e.event == "token"] == [str(i) for i in range(30)]
    assert text_of(events) == PROMPT
    assert events[-1].event == "complete"
    assert events[-1].data == {
        "status": "done",
        "result": PROMPT,
        "finish_reason": "stop",
        "cache_status": "ineligible",
        "cache_source": None,
    }


async def test_a_live_subscriber_gets_tokens_as_they_are_made(engine: Engine) -> None:
    request = await asubmit(PROMPT, backend="slow-echo")
    client = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    partial = await client.read_until(lambda evs: 0 < len(seqs_of(evs)) < 30)
    row = await InferenceRequest.objects.aget(pk=request.pk)
    assert row.status == "processing", "tokens arrived before the request finished"
    assert len(seqs_of(partial)) < 30
    events = await client.events()
    assert seqs_of(events) == list(range(30)) and text_of(events) == PROMPT


async def test_a_late_subscriber_gets_earlier_tokens_first_exactly_once(engine: Engine) -> None:
    request = await asubmit(PROMPT, backend="slow-echo")
    early = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    await early.read_until(lambda evs: len(seqs_of(evs)) >= 10)
    late = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    for client in (early, late):
        events = await client.events()
        assert seqs_of(events) == list(range(30))
        assert text_of(events) == PROMPT


async def test_last_event_id_resumes_after_that_token(engine: Engine) -> None:
    request = await asubmit(PROMPT)
    await finished(request.pk)
    client = await SSEClient(f"/api/v1/stream/{request.pk}", [(b"last-event-id", b"19")]).open()
    events = await client.events()
    assert seqs_of(events) == list(range(20, 30))
    assert PROMPT.endswith(text_of(events))


async def test_a_dropped_client_that_reconnects_gets_exactly_the_rest(engine: Engine) -> None:
    request = await asubmit(PROMPT, backend="slow-echo")
    first = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    got = await first.read_until(lambda evs: len(seqs_of(evs)) >= 8)
    await first.disconnect()
    last_id = [e.id for e in got if e.event == "token"][-1]
    second = await SSEClient(
        f"/api/v1/stream/{request.pk}", [(b"last-event-id", last_id.encode())]
    ).open()
    rest = await second.events()
    assert seqs_of(got) + seqs_of(rest) == list(range(30))
    assert text_of(got) + text_of(rest) == PROMPT


async def test_a_failed_request_ends_with_an_error_event(engine: Engine) -> None:
    request = await asubmit(backend="failing-midway")
    await finished(request.pk)
    events = await (await SSEClient(f"/api/v1/stream/{request.pk}").open()).events()
    assert seqs_of(events) == [0, 1, 2]
    assert events[-1].event == "error"
    assert events[-1].data["error"]["code"] == "stream_interrupted"
    assert events[-1].data["status"] == "failed"


@pytest.mark.parametrize("request_id", [str(uuid.uuid4()), "not-a-uuid"])
async def test_an_unknown_or_malformed_id_is_a_json_404(request_id: str) -> None:
    client = await SSEClient(f"/api/v1/stream/{request_id}").open()
    assert client.status == 404
    await client.events()
    assert '"not_found_error"' in client.raw


async def test_disconnecting_releases_the_subscription_but_not_the_request(engine: Engine) -> None:
    request = await asubmit(PROMPT, backend="slow-echo")
    client = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    await client.read_until(lambda evs: len(seqs_of(evs)) >= 3)
    group = pipeline_events.request_group(request.pk)
    layer = get_channel_layer()
    assert layer.groups.get(group)
    await client.disconnect()
    assert not layer.groups.get(group), "the reader left its group"
    done = await finished(request.pk)
    assert (done.status, done.result) == ("completed", PROMPT)


async def test_an_idle_stream_sends_keepalive_comments(transactional_db, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_STREAM_POLL_SECONDS = 0.05
    settings.ORCHESTRATOR_SSE_KEEPALIVE_SECONDS = 0
    request = await asubmit()  # no engine: it stays pending
    client = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    while ": keepalive" not in client.raw:
        await client.read_chunk()
    await client.disconnect()
