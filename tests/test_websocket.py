"""WS /api/v1/ws: submit, stream, many in flight, cancel, resume, bad input."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator

from inference.models import InferenceRequest
from inference.routing import websocket_urlpatterns
from pipeline.worker import Engine
from tests.conftest import asubmit, finished

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = " ".join(f"w{i}" for i in range(20))
APP = URLRouter(websocket_urlpatterns)


async def connected(app: Any = APP, headers: list | None = None) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(app, "/api/v1/ws", headers=headers or [])
    ok, _ = await socket.connect()
    assert ok
    return socket


async def until_final(socket: WebsocketCommunicator, request_id: str) -> list[dict]:
    """Messages up to this request's result or error."""
    messages = []
    while True:
        message = await socket.receive_json_from(timeout=10)
        messages.append(message)
        if message.get("request_id") == request_id and message["type"] in ("result", "error"):
            return messages


def tokens(messages: list[dict], request_id: str) -> list[dict]:
    return [m for m in messages if m["type"] == "token" and m["request_id"] == request_id]


async def test_a_submit_is_acked_then_streamed_then_resulted(engine: Engine) -> None:
    socket = await connected()
    await socket.send_json_to({"prompt": PROMPT, "metadata": {"user": "alice"}})
    ack = await socket.receive_json_from()
    assert ack["type"] == "ack" and ack["status"] == "processing"
    request_id = ack["request_id"]
    messages = await until_final(socket, request_id)
    streamed = tokens(messages, request_id)
    assert [m["chunk"] for m in streamed] == list(range(20))
    assert "".join(m["data"] for m in streamed) == PROMPT
    assert messages[-1] == {
        "type": "result",
        "request_id": request_id,
        "result": PROMPT,
        "status": "completed",
        "usage": {
            "prompt_tokens": 26,
            "completion_tokens": 20,
            "total_tokens": 46,
            "estimated": False,
        },
        "finish_reason": "stop",
        "cache_status": "ineligible",
        "cache_source": None,
    }
    row = await InferenceRequest.objects.aget(pk=request_id)
    assert (row.transport, row.metadata) == ("ws", {"user": "alice"})
    await socket.disconnect()


async def test_several_requests_stream_at_once_on_one_socket(engine: Engine) -> None:
    socket = await connected()
    prompts = [f"request {i} " + PROMPT for i in range(3)]
    for prompt in prompts:
        await socket.send_json_to({"type": "infer", "prompt": prompt, "backend": "slow-echo"})
    ids = [(await socket.receive_json_from())["request_id"] for _ in prompts]
    messages: list[dict] = []
    pending = set(ids)
    while pending:
        message = await socket.receive_json_from(timeout=10)
        messages.append(message)
        if message["type"] == "result":
            pending.discard(message["request_id"])
    for request_id, prompt in zip(ids, prompts, strict=True):
        assert "".join(m["data"] for m in tokens(messages, request_id)) == prompt
    interleaved = [m["request_id"] for m in messages if m["type"] == "token"]
    assert interleaved != sorted(interleaved, key=ids.index), "streams ran concurrently"
    await socket.disconnect()


async def test_stream_false_sends_only_the_result(engine: Engine) -> None:
    socket = await connected()
    await socket.send_json_to({"prompt": PROMPT, "stream": False})
    request_id = (await socket.receive_json_from())["request_id"]
    messages = await until_final(socket, request_id)
    assert [m["type"] for m in messages] == ["result"]
    await socket.disconnect()


async def test_an_idempotency_key_reused_for_another_prompt_is_refused(engine: Engine) -> None:
    socket = await connected()
    await socket.send_json_to({"prompt": PROMPT, "stream": False, "idempotency_key": "ws-1"})
    first = await socket.receive_json_from()
    await until_final(socket, first["request_id"])
    await socket.send_json_to({"prompt": "another", "stream": False, "idempotency_key": "ws-1"})
    refused = await socket.receive_json_from()
    assert refused["type"] == "error" and refused["error"]["code"] == "idempotency_key_reused"
    assert await InferenceRequest.objects.acount() == 1
    await socket.disconnect()


async def test_cancel_ends_the_request_and_reports_it(engine: Engine) -> None:
    socket = await connected()
    await socket.send_json_to({"prompt": "x", "backend": "endless"})
    request_id = (await socket.receive_json_from())["request_id"]
    assert (await socket.receive_json_from())["type"] == "token"
    await socket.send_json_to({"type": "cancel", "request_id": request_id})
    final = (await until_final(socket, request_id))[-1]
    assert (final["type"], final["status"]) == ("result", "cancelled")
    assert (await InferenceRequest.objects.aget(pk=request_id)).status == "cancelled"
    await socket.disconnect()


async def test_resume_replays_exactly_the_rest(engine: Engine) -> None:
    request = await asubmit(PROMPT)
    await finished(request.pk)
    socket = await connected()
    await socket.send_json_to({"type": "resume", "request_id": str(request.pk), "last_chunk": 11})
    messages = await until_final(socket, str(request.pk))
    assert [m["chunk"] for m in tokens(messages, str(request.pk))] == list(range(12, 20))
    assert messages[-1]["result"] == PROMPT
    await socket.disconnect()


async def test_a_dropped_socket_resumes_on_a_new_one_without_gaps(engine: Engine) -> None:
    first = await connected()
    await first.send_json_to({"prompt": PROMPT, "backend": "slow-echo"})
    request_id = (await first.receive_json_from())["request_id"]
    got = [await first.receive_json_from() for _ in range(5)]
    await first.disconnect()
    second = await connected()
    await second.send_json_to(
        {"type": "resume", "request_id": request_id, "last_chunk": got[-1]["chunk"]}
    )
    rest = await until_final(second, request_id)
    text = "".join(m["data"] for m in got + tokens(rest, request_id))
    assert text == PROMPT
    await second.disconnect()


async def test_disconnecting_does_not_cancel_the_request(engine: Engine) -> None:
    socket = await connected()
    await socket.send_json_to({"prompt": PROMPT, "backend": "slow-echo"})
    request_id = (await socket.receive_json_from())["request_id"]
    await socket.receive_json_from()
    await socket.disconnect()
    assert (await finished(uuid.UUID(request_id))).status == "completed"


BAD_MESSAGES = [
    pytest.param("not json", "invalid_json", None, id="invalid-json"),
    pytest.param("[1, 2]", "invalid_message", None, id="not-an-object"),
    pytest.param(json.dumps({"type": "dance"}), "unknown_type", "type", id="unknown-type"),
    pytest.param(json.dumps({"prompt": 7}), "not_a_string", "prompt", id="prompt-not-a-string"),
    pytest.param(json.dumps({}), "required", "prompt", id="missing-prompt"),
    pytest.param(
        json.dumps({"prompt": "x", "backend": "nope"}),
        "unknown_backend",
        "backend",
        id="bad-backend",
    ),
    pytest.param(
        json.dumps({"type": "cancel", "request_id": "nope"}),
        "not_found",
        "request_id",
        id="cancel-unknown",
    ),
    pytest.param(
        json.dumps({"type": "resume", "request_id": str(uuid.uuid4())}),
        "not_found",
        "request_id",
        id="resume-unknown",
    ),
]


@pytest.mark.parametrize(("frame", "code", "param"), BAD_MESSAGES)
async def test_bad_messages_get_an_error_and_the_socket_stays_open(
    engine: Engine, frame: str, code: str, param: str | None
) -> None:
    socket = await connected()
    await socket.send_to(text_data=frame)
    error = await socket.receive_json_from()
    assert error["type"] == "error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    await socket.send_json_to({"prompt": "still here"})  # the socket still works
    assert (await socket.receive_json_from())["type"] == "ack"
    await socket.disconnect()


async def test_a_binary_frame_gets_an_error(engine: Engine) -> None:
    socket = await connected()
    await socket.send_to(bytes_data=b"\x00\x01")
    assert (await socket.receive_json_from())["error"]["code"] == "invalid_frame"
    await socket.disconnect()


async def test_an_oversized_frame_closes_with_1009(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_BODY_BYTES = 1000
    socket = await connected()
    await socket.send_json_to({"prompt": "x" * 2000})
    assert await socket.receive_output() == {"type": "websocket.close", "code": 1009}


async def test_browsers_from_other_origins_are_refused(transactional_db) -> None:  # type: ignore[no-untyped-def]
    app = AllowedHostsOriginValidator(APP)
    evil = WebsocketCommunicator(app, "/api/v1/ws", headers=[(b"origin", b"http://evil.example")])
    assert (await evil.connect())[0] is False
    own = WebsocketCommunicator(app, "/api/v1/ws", headers=[(b"origin", b"http://localhost:8000")])
    assert (await own.connect())[0] is True
    await own.disconnect()


async def test_an_unknown_websocket_path_is_refused() -> None:
    socket = WebsocketCommunicator(APP, "/api/v1/nope")
    connected_ok, code = await socket.connect()
    assert (connected_ok, code) == (False, 4404)


async def test_the_cache_field_steers_the_cache_and_the_result_says_what_it_did(
    engine: Engine,
) -> None:
    socket = await connected()
    results = []
    for cache in ({}, {}, {"mode": "bypass"}):
        await socket.send_json_to({"prompt": "cache me", "temperature": 0, "cache": cache})
        request_id = (await socket.receive_json_from())["request_id"]
        results.append((await until_final(socket, request_id))[-1])
    assert [r["cache_status"] for r in results] == ["stored", "hit", "bypass"]
    assert results[1]["cache_source"] == results[0]["request_id"]
    assert {r["result"] for r in results} == {"cache me"}
    await socket.send_json_to({"prompt": "p", "cache": {"mode": "always"}})
    error = await socket.receive_json_from()
    assert error["type"] == "error" and "cache" in json.dumps(error)
    await socket.disconnect()
