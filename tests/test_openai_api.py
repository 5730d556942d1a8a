"""The ``/v1`` surface in-process: how a body maps to a durable request, what
the pipeline does with a client's own conversation, the disconnect grace, and
the details the SDK tests (tests/test_openai_sdk.py) cannot see."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from rest_framework.exceptions import ValidationError

from inference import services
from inference.admission import Refusal
from inference.models import FeatureFlag, InferenceRequest, Status, Transport
from inference.openai_wire import (
    ChatCompletionSerializer,
    native_priority,
    openai_priority,
    resolve_model,
)
from inference.streaming import wait_until_finished
from pipeline.backends.base import GenerationParams
from pipeline.backends.openai_compat import OpenAICompatBackend
from pipeline.context import PipelineContext, RequestSnapshot
from pipeline.stages.assemble import AssembleStage
from tests.conftest import TEST_BACKENDS, asubmit, finished
from tests.sse import SSEClient
from tests.test_stages import ListSink

UPSTREAM = {
    "class": "pipeline.backends.openai_compat.OpenAICompatBackend",
    "options": {"base_url": "http://127.0.0.1:9/v1", "model": "small"},
    "models": ["large"],
}


def submission(**body: Any) -> services.Submission:
    serializer = ChatCompletionSerializer(
        data={"model": "echo", "messages": [{"role": "user", "content": "hi"}], **body}
    )
    serializer.is_valid(raise_exception=True)
    return serializer.to_submission(transport=Transport.OPENAI)


# --- the request mapping --------------------------------------------------------------


def test_priorities_follow_vllm_polarity_lower_is_sooner() -> None:
    """Pinned: /v1 0 is our normal 5; -4 our highest 9; 5 our lowest 0."""
    assert [native_priority(p) for p in (-4, -1, 0, 1, 5)] == [9, 6, 5, 4, 0]
    assert all(openai_priority(native_priority(p)) == p for p in range(-4, 6))
    assert submission(priority=-4).priority == 9
    assert submission().priority == 5
    with pytest.raises(ValidationError):
        submission(priority=6)


def test_model_names_resolve_to_a_backend_and_upstream_model(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKENDS = {**TEST_BACKENDS, "up": UPSTREAM}
    assert resolve_model("echo") == ("echo", "")
    assert resolve_model("up/small") == ("up", "small")  # its configured model
    assert resolve_model("up/large") == ("up", "large")  # declared
    for unknown in ("up/huge", "gpt-4o", "echo/x", "up/"):
        with pytest.raises(Refusal) as refused:
            resolve_model(unknown)
        assert (refused.value.status, refused.value.code) == (404, "model_not_found")
        assert refused.value.param == "model"
    settings.ORCHESTRATOR_BACKENDS["up"] = {**UPSTREAM, "models": ["*"]}
    assert resolve_model("up/huge") == ("up", "huge")


def test_no_model_means_the_configured_default(settings) -> None:  # type: ignore[no-untyped-def]
    assert resolve_model("") == ("echo", "")
    settings.ORCHESTRATOR_OPENAI_DEFAULT_MODEL = "slow-echo"
    assert resolve_model("") == ("slow-echo", "")


def test_the_clients_messages_become_the_conversation() -> None:
    made = submission(
        messages=[
            {"role": "developer", "content": "Be terse."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "ok", "name": "bot"},
            {"role": "user", "content": "again"},
        ],
        user="u-42",
        seed=7,
        stop="END",
        max_completion_tokens=12,
    )
    assert made.conversation == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    assert made.prompt == "again"
    assert made.metadata == {"user": "u-42"}
    assert made.params == {
        "max_tokens": 12,
        "seed": 7,
        "stop": ["END"],
        "rag": {"enabled": False},  # the caller owns the conversation
    }
    assert submission(rag=True).params["rag"] == {"enabled": True}


def test_a_role_that_is_not_a_string_is_a_400_not_a_crash() -> None:
    with pytest.raises(ValidationError):
        submission(messages=[{"role": {}, "content": ""}])
    with pytest.raises(ValidationError):
        submission(messages=[])


def test_empty_stop_strings_stop_nothing() -> None:
    assert "stop" not in submission(stop="").params
    assert submission(stop=["", "END"]).params["stop"] == ["END"]


def test_null_means_not_set() -> None:
    made = submission(temperature=None, max_tokens=None, stop=None, n=1, tools=None)
    assert made.params == {"rag": {"enabled": False}}


def test_unknown_fields_are_named_not_refused() -> None:
    serializer = ChatCompletionSerializer(
        data={
            "model": "echo",
            "messages": [{"role": "user", "content": "x"}],
            "zeta": 1,
            "alpha": 2,
        }
    )
    assert serializer.is_valid()
    assert serializer.ignored_params() == ["alpha", "zeta"]
    odd = ChatCompletionSerializer(
        data={"model": "echo", "messages": [{"role": "user", "content": "x"}], "\x0b\u00e9": 1}
    )
    assert odd.is_valid() and odd.ignored_params() == ["(1 more)"]  # a header cannot hold it


# --- the pipeline with a client's conversation -----------------------------------------


def conversation_context(conversation: list[dict[str, str]], **fields: Any) -> PipelineContext:
    snapshot = RequestSnapshot(
        id=uuid.uuid4(),
        attempt=1,
        prompt=conversation[-1]["content"],
        session_id="s",
        backend="echo",
        params=GenerationParams(max_tokens=50),
        conversation=conversation,
    )
    return PipelineContext(request=snapshot, sink=ListSink(), **fields)


CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What is RAG?"},
]


@pytest.mark.django_db(transaction=True)
async def test_assemble_passes_a_conversation_through_unchanged(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_SYSTEM_PROMPT = "OUR PROMPT"
    ctx = await AssembleStage().run(conversation_context(CONVERSATION))
    assert ctx.messages == CONVERSATION


@pytest.mark.django_db(transaction=True)
async def test_retrieved_sources_go_ahead_of_the_conversation() -> None:
    passages = [{"title": "Doc", "text": "Retrieval augmented generation."}]
    ctx = await AssembleStage().run(conversation_context(CONVERSATION, passages=passages))
    assert ctx.messages[1:] == CONVERSATION
    assert ctx.messages[0]["role"] == "system"
    assert "[1] Doc: Retrieval augmented generation." in ctx.messages[0]["content"]


def test_the_upstream_model_and_seed_reach_the_upstream() -> None:
    backend = OpenAICompatBackend(name="up", base_url="http://x/v1", model="small")
    body = backend.body([], GenerationParams(max_tokens=5, model="large", seed=3))
    assert (body["model"], body["seed"]) == ("large", 3)
    assert backend.body([], GenerationParams(max_tokens=5))["model"] == "small"
    assert "seed" not in backend.body([], GenerationParams(max_tokens=5))


@pytest.mark.django_db(transaction=True)
async def test_a_fallback_backend_runs_its_own_model(settings) -> None:  # type: ignore[no-untyped-def]
    from pipeline.stages.infer import InferenceStage

    seen: list[GenerationParams] = []

    class Recording:
        name = "echo"

        async def stream(self, messages, params, usage):  # type: ignore[no-untyped-def]
            seen.append(params)
            yield "x"

    ctx = conversation_context(CONVERSATION)
    ctx.request = replace(ctx.request, backend="up", params=GenerationParams(model="large"))
    await InferenceStage()._stream(ctx, Recording(), [])  # type: ignore[arg-type]
    assert seen[0].model == ""


# --- the consumer: answers, errors, CORS, the disconnect grace ------------------------------


def post(body: dict[str, Any], **headers: str) -> SSEClient:
    raw = [
        (k.lower().encode(), v.encode())
        for k, v in {"content-type": "application/json", **headers}.items()
    ]
    return SSEClient("/v1/chat/completions", raw, method="POST", body=json.dumps(body).encode())


def chat(backend: str, content: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": backend, "messages": [{"role": "user", "content": content}], **fields}


def request_id_of(client: SSEClient) -> uuid.UUID:
    return uuid.UUID(client.response_headers[b"x-orchestrator-request-id"].decode())


@pytest.mark.django_db(transaction=True)
async def test_a_failed_request_is_a_502_the_sdk_will_not_retry(engine) -> None:  # type: ignore[no-untyped-def]
    client = await post(chat("failing")).open()
    await client.events()
    assert client.status == 502
    assert client.response_headers[b"x-should-retry"] == b"false"
    assert json.loads(client.raw)["error"]["type"] == "api_error"


@pytest.mark.django_db(transaction=True)
async def test_a_dropped_stream_is_cancelled_at_once_with_no_grace(engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS = 0
    client = await post(chat("endless", stream=True)).open()
    await client.read_until(lambda _: '"content"' in client.raw)
    await client.disconnect()
    row = await finished(request_id_of(client), timeout=2)
    assert row.status == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
async def test_a_dropped_stream_keeps_running_when_cancelling_is_off(engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS = 0
    settings.ORCHESTRATOR_OPENAI_CANCEL_ON_DISCONNECT = False
    client = await post(chat("slow-echo", "one two three four five six", stream=True)).open()
    await client.read_chunk()
    await client.disconnect()
    assert (await finished(request_id_of(client))).status == Status.COMPLETED


@pytest.mark.django_db(transaction=True)
async def test_a_reader_resuming_within_the_grace_keeps_the_request(engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS = 0.3
    client = await post(chat("endless", stream=True)).open()
    await client.read_chunk()
    await client.disconnect()
    request_id = request_id_of(client)
    await asyncio.sleep(0.05)
    assert (await InferenceRequest.objects.aget(pk=request_id)).detached_at is not None
    resumed = await SSEClient(f"/api/v1/stream/{request_id}").open()
    await asyncio.sleep(0.6)
    row = await InferenceRequest.objects.aget(pk=request_id)
    assert (row.status, row.detached_at) == (Status.PROCESSING, None)
    await resumed.disconnect()
    await database_sync_to_async(services.cancel_request)(request_id)


@pytest.mark.django_db(transaction=True)
async def test_a_finished_stream_abandons_nothing(engine, settings) -> None:  # type: ignore[no-untyped-def]
    client = await post(chat("echo", stream=True)).open()
    await client.events()
    await client.disconnect()
    row = await InferenceRequest.objects.aget(pk=request_id_of(client))
    assert (row.status, row.detached_at) == (Status.COMPLETED, None)


@pytest.mark.django_db(transaction=True)
async def test_the_api_can_be_turned_off_by_its_flag(engine) -> None:  # type: ignore[no-untyped-def]
    await FeatureFlag.objects.acreate(name="openai_api", enabled=False)
    from inference import flags

    flags.invalidate()
    client = await post(chat("echo")).open()
    await client.events()
    assert client.status == 404
    assert (await database_sync_to_async(Client().get)("/v1/models")).status_code == 404


@pytest.mark.django_db(transaction=True)
async def test_browsers_may_send_the_sdk_headers_and_read_ours(settings) -> None:  # type: ignore[no-untyped-def]
    settings.CORS_ALLOW_ALL_ORIGINS = True
    preflight = SSEClient(
        "/v1/chat/completions",
        [(b"origin", b"http://localhost:5173"), (b"access-control-request-method", b"POST")],
        method="OPTIONS",
    )
    await preflight.open()
    allowed = preflight.response_headers[b"access-control-allow-headers"].decode()
    assert preflight.status == 204
    assert {"authorization", "x-stainless-os", "x-stainless-retry-count"} <= set(
        allowed.split(", ")
    )
    client = await post(chat("nope"), origin="http://localhost:5173").open()
    exposed = client.response_headers[b"access-control-expose-headers"].decode()
    assert "X-Orchestrator-Request-Id" in exposed and "retry-after-ms" in exposed


@pytest.mark.django_db(transaction=True)
async def test_a_body_that_is_not_json_is_a_400(engine) -> None:  # type: ignore[no-untyped-def]
    client = SSEClient("/v1/chat/completions", method="POST", body=b"{nope")
    await client.open()
    await client.events()
    assert client.status == 400
    assert json.loads(client.raw)["error"]["param"] == "body"


@pytest.mark.django_db(transaction=True)
async def test_a_long_poll_reads_the_row_only_when_it_finishes(engine) -> None:  # type: ignore[no-untyped-def]
    """Chunk events do not wake a waiter: a 40-token answer costs two reads."""
    submitted = await asubmit(" ".join(["w"] * 40), backend="slow-echo")
    reads = 0

    async def read(**lookup: Any) -> InferenceRequest:
        nonlocal reads
        reads += 1
        return await database_sync_to_async(InferenceRequest.objects.get)(**lookup)

    row = await wait_until_finished(submitted.pk, 10, read)
    assert row.status == Status.COMPLETED and reads <= 3


async def dropped_stream(settings, idempotency_key: str = "") -> uuid.UUID:  # type: ignore[no-untyped-def]
    """A streamed /v1 call on the endless backend, dropped after its first chunk."""
    headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
    client = await post(chat("endless", stream=True), **headers).open()
    await client.read_until(lambda _: '"content"' in client.raw)
    await client.disconnect()
    return request_id_of(client)


async def status_after_the_grace(request_id: uuid.UUID, settings) -> str:  # type: ignore[no-untyped-def]
    await asyncio.sleep(settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS + 0.4)
    return str((await InferenceRequest.objects.aget(pk=request_id)).status)


@pytest.mark.django_db(transaction=True)
async def test_a_reader_attached_before_the_call_drops_keeps_it(engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Readers are counted: the call's own drop does not cancel under a resumed stream."""
    settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS = 0.3
    client = await post(chat("endless", stream=True)).open()
    await client.read_until(lambda _: '"content"' in client.raw)
    request_id = request_id_of(client)
    watcher = await SSEClient(f"/api/v1/stream/{request_id}").open()
    await watcher.read_chunk()
    await client.disconnect()
    assert await status_after_the_grace(request_id, settings) == Status.PROCESSING
    await watcher.disconnect()  # now nobody reads it
    assert await status_after_the_grace(request_id, settings) == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
async def test_replaying_a_dropped_call_with_its_idempotency_key_keeps_it(engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS = 0.3
    request_id = await dropped_stream(settings, idempotency_key="replay-1")
    replay = await post(chat("endless", stream=True), **{"idempotency-key": "replay-1"}).open()
    await replay.read_until(lambda _: '"content"' in replay.raw)
    assert request_id_of(replay) == request_id
    assert await status_after_the_grace(request_id, settings) == Status.PROCESSING
    await replay.disconnect()
    assert await status_after_the_grace(request_id, settings) == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/api/v1/result/{}?wait=1", "/v1/chat/completions/{}?wait=1"])
async def test_a_waiting_fetch_keeps_a_dropped_call_while_it_waits(engine, settings, path) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS = 0.3
    from django.test import AsyncClient

    request_id = await dropped_stream(settings)
    fetched = await AsyncClient().get(path.format(request_id))
    assert fetched.status_code in (202, 409)  # still running after the 1 s wait
    row = await InferenceRequest.objects.aget(pk=request_id)
    assert row.status == Status.PROCESSING  # 1 s > the grace: the wait kept it
    assert await status_after_the_grace(request_id, settings) == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
async def test_without_keys_required_any_key_an_sdk_sends_is_ignored(engine, settings) -> None:  # type: ignore[no-untyped-def]
    """OpenAI clients always send one ("EMPTY", "sk-no-key"): vLLM and Ollama
    ignore it when they need none. The native API still refuses a bad key."""
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    client = await post(chat("echo"), authorization="Bearer sk-no-key-required").open()
    await client.events()
    assert client.status == 200
    http = Client()
    bogus = {"Authorization": "Bearer EMPTY"}
    assert (await database_sync_to_async(http.get)("/v1/models", headers=bogus)).status_code == 200
    native = await database_sync_to_async(http.get)("/api/v1/requests/", headers=bogus)
    assert native.status_code == 401
    settings.ORCHESTRATOR_AUTH_REQUIRED = True
    refused = await post(chat("echo"), authorization="Bearer sk-no-key-required").open()
    await refused.events()
    assert refused.status == 401
