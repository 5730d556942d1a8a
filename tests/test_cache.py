"""The response cache, end to end through the engine, against a loopback upstream
that counts its calls (harness/fake_llm_server.py): one call per distinct
question, never an answer to another one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from harness.fake_llm_server import FakeLLMServer
from inference import metrics, services
from inference.models import ApiKey, CacheStatus, InferenceRequest, Status
from pipeline.worker import Engine
from tests.conftest import asubmit, finished, tokens_of

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "the quick brown fox"


async def ask(prompt: str = PROMPT, **fields: Any) -> InferenceRequest:
    fields.setdefault("temperature", 0.0)
    if fields["temperature"] is None:
        del fields["temperature"]
    return await finished((await asubmit(prompt, **fields)).pk)


async def test_a_repeat_is_answered_from_the_cache_with_the_same_stream(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    first = await ask()
    second = await ask()
    assert upstream.calls["ok"] == 1
    assert (first.cache_status, second.cache_status) == (CacheStatus.STORED, CacheStatus.HIT)
    assert second.status == Status.COMPLETED and second.result == first.result == PROMPT
    assert second.cache_source_id == first.pk and second.cache_key == first.cache_key
    # Usage says what the answer cost when it was made; the stream is the source's.
    assert second.usage == first.usage and second.finish_reason == first.finish_reason
    assert (
        await tokens_of(second.pk)
        == await tokens_of(first.pk)
        == ["the", " quick", " brown", " fox"]
    )
    assert second.cache_expires_at is None  # only the source is an entry


async def test_an_omitted_temperature_is_sampled_unless_forced(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    sampled = [await ask(temperature=None) for _ in range(2)]
    assert upstream.calls["ok"] == 2
    assert {r.cache_status for r in sampled} == {CacheStatus.INELIGIBLE}
    assert all(r.cache_key is None for r in sampled)
    forced = [await ask(temperature=0.7, cache_control={"mode": "force"}) for _ in range(2)]
    assert upstream.calls["ok"] == 3
    assert [r.cache_status for r in forced] == [CacheStatus.STORED, CacheStatus.HIT]


async def test_no_cache_generates_and_stores_no_store_does_neither(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    first = await ask()
    refreshed = await ask(cache_control={"mode": "refresh"})
    assert upstream.calls["ok"] == 2 and refreshed.cache_status == CacheStatus.STORED
    assert (await ask()).cache_source_id == refreshed.pk  # the newest entry serves
    bypassed = await ask("a prompt not seen before", cache_control={"mode": "bypass"})
    assert bypassed.cache_status == CacheStatus.BYPASS and bypassed.cache_expires_at is None
    after = await ask("a prompt not seen before")
    assert after.cache_status == CacheStatus.STORED and upstream.calls["ok"] == 4
    assert first.cache_key == refreshed.cache_key


async def test_max_age_and_the_ttl_bound_what_is_served(
    engine: Engine,
    upstream: FakeLLMServer,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    await ask()
    assert (await ask(cache_control={"max_age": 0})).cache_status == CacheStatus.STORED
    assert (await ask(cache_control={"max_age": 60})).cache_status == CacheStatus.HIT
    settings.ORCHESTRATOR_CACHE_TTL_SECONDS = 0.5
    short = await ask("short lived")
    await asyncio.sleep(0.6)
    assert (await ask("short lived")).cache_status == CacheStatus.STORED
    assert short.cache_status == CacheStatus.STORED and upstream.calls["ok"] == 4
    # A client's ttl is capped by the server's maximum.
    settings.ORCHESTRATOR_CACHE_MAX_TTL_SECONDS = 10
    capped = await ask("capped", cache_control={"ttl": 86_400})
    lifetime = (capped.cache_expires_at - capped.finished_at).total_seconds()
    assert 9 < lifetime <= 10.1


def make_key(name: str) -> ApiKey:
    key, _ = ApiKey.objects.create_key(name=name)
    return key


async def test_the_cache_is_per_key_unless_the_operator_makes_it_global(
    engine: Engine,
    upstream: FakeLLMServer,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    alice, bob = [await database_sync_to_async(make_key)(n) for n in ("alice", "bob")]
    await ask(caller=services.Caller(key=alice))
    assert (await ask(caller=services.Caller(key=bob))).cache_status == CacheStatus.STORED
    assert upstream.calls["ok"] == 2
    settings.ORCHESTRATOR_CACHE_SCOPE = "global"
    await ask("shared", caller=services.Caller(key=alice))
    assert (await ask("shared", caller=services.Caller(key=bob))).cache_status == CacheStatus.HIT


async def test_an_ingested_document_or_a_later_turn_changes_the_key(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    prompt = "what colour is the fox"
    first = await ask(prompt)
    await database_sync_to_async(services.ingest_document)(
        "Foxes", "The fox in this story is bright orange and quick."
    )
    after_ingest = await ask(prompt)
    assert after_ingest.cache_status == CacheStatus.STORED and after_ingest.passages
    assert after_ingest.cache_key != first.cache_key
    opening = await ask("hello there", session_id="s1", rag=False)
    follow_up = await ask("hello there", session_id="s1", rag=False)
    assert follow_up.cache_status == CacheStatus.STORED  # it has a turn before it now
    assert len(follow_up.messages) == len(opening.messages) + 2
    assert upstream.calls["ok"] == 4


async def test_any_generation_parameter_or_another_backend_misses(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    base = await ask()
    variants = [
        await ask(max_tokens=3),
        await ask(top_p=0.5),
        await ask(stop=["brown"]),
        await ask(params={"seed": 7}),
        await ask(backend="upstream-slow"),
    ]
    assert {v.cache_status for v in variants} == {CacheStatus.STORED}
    assert len({base.cache_key, *(v.cache_key for v in variants)}) == 6


async def test_a_fallback_answer_is_not_stored_for_the_primary(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    fallback = await ask(backend="down")
    assert fallback.status == Status.COMPLETED and fallback.backend_used == "upstream"
    assert fallback.cache_status == CacheStatus.MISS and fallback.cache_expires_at is None
    again = await ask(backend="down")
    assert again.cache_status == CacheStatus.MISS and upstream.calls["500"] == 2


@pytest.mark.parametrize("ending", [Status.FAILED, Status.CANCELLED, Status.EXPIRED])
async def test_an_unfinished_request_is_never_a_source(
    engine: Engine, upstream: FakeLLMServer, ending: str
) -> None:
    await ask()
    source = await database_sync_to_async(
        InferenceRequest.objects.filter(cache_status=CacheStatus.STORED).get
    )()
    # However the row got there, only a completed request with a live expiry serves.
    await database_sync_to_async(InferenceRequest.objects.filter(pk=source.pk).update)(
        status=ending
    )
    assert (await ask()).cache_status == CacheStatus.STORED
    failed = await ask("x", backend="failing-midway")
    assert failed.status == Status.FAILED and failed.cache_expires_at is None


async def test_a_broken_cache_is_a_miss_never_a_failure(
    engine: Engine,
    upstream: FakeLLMServer,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the cache index is unreadable")

    monkeypatch.setattr(InferenceRequest.objects, "cache_entry", broken)
    before = metrics.CACHE_ERRORS.labels("lookup")._value.get()
    request = await ask()
    assert request.status == Status.COMPLETED and request.result == PROMPT
    assert request.cache_status == CacheStatus.MISS
    assert metrics.CACHE_ERRORS.labels("lookup")._value.get() == before + 1


async def test_turned_off_the_cache_stays_out_of_the_way(
    engine: Engine,
    upstream: FakeLLMServer,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    features = settings.ORCHESTRATOR_FEATURES
    settings.ORCHESTRATOR_FEATURES = {**features, "cache": False, "dedup": False}
    assert [(await ask()).cache_status for _ in range(2)] == [CacheStatus.INELIGIBLE] * 2
    # Dedup alone keys a request, but never stores its answer.
    settings.ORCHESTRATOR_FEATURES = {**features, "cache": False}
    alone = [await ask() for _ in range(2)]
    assert [r.cache_status for r in alone] == [CacheStatus.MISS] * 2
    assert alone[0].cache_key and alone[0].cache_expires_at is None
    settings.ORCHESTRATOR_FEATURES = features
    settings.ORCHESTRATOR_CACHE_MODE = "opt_in"
    assert [(await ask("opt in")).cache_status for _ in range(2)] == [CacheStatus.MISS] * 2
    forced = [await ask(cache_control={"mode": "force"}) for _ in range(2)]
    assert [r.cache_status for r in forced] == [CacheStatus.STORED, CacheStatus.HIT]


# --- over HTTP: directives in, Cache-Status out, and the operators' routes -----------------


def post(client: Client, headers: dict[str, str] | None = None, **body: Any) -> Any:
    body = {"prompt": PROMPT, "temperature": 0, **body}
    response = client.post(
        "/api/v1/infer", json.dumps(body), content_type="application/json", headers=headers or {}
    )
    assert response.status_code == 202, response.content
    return response.json()["request_id"]


async def result(client: Client, request_id: str) -> Any:
    """The finished result (polled: a long-poll would hold the thread the engine
    writes on in this single-process test)."""
    for _ in range(200):
        response = await database_sync_to_async(client.get)(f"/api/v1/result/{request_id}")
        if response.status_code == 200:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError("the request did not finish")


async def test_http_directives_and_cache_status(engine: Engine, upstream: FakeLLMServer) -> None:
    client = Client()
    send = database_sync_to_async(post)
    first = await result(client, await send(client))
    assert first.headers["Cache-Status"] == "orchestrator; fwd=uri-miss; stored"
    key = first.headers["X-Orchestrator-Cache-Key"]
    assert first.json()["cache_key"] == key and first.json()["cache_status"] == "stored"
    hit = await result(client, await send(client))
    assert hit.headers["Cache-Status"] == "orchestrator; hit"
    assert hit.headers["X-Orchestrator-Cache-Key"] == key
    assert hit.json()["cache_source"] == first.json()["request_id"]
    refreshed = await result(client, await send(client, {"Cache-Control": "no-cache"}))
    assert refreshed.headers["Cache-Status"] == "orchestrator; fwd=request; stored"
    bypassed = await result(client, await send(client, {"Cache-Control": "no-store, no-cache"}))
    assert bypassed.headers["Cache-Status"] == "orchestrator; fwd=request"
    assert "X-Orchestrator-Cache-Key" not in bypassed.headers
    sampled = await result(client, await send(client, temperature=0.5))
    assert sampled.headers["Cache-Status"] == "orchestrator; fwd=bypass"
    forced = await result(
        client, await send(client, {"X-Orchestrator-Cache": "force"}, temperature=0.5)
    )
    assert forced.json()["cache_status"] == "stored"
    assert upstream.calls["ok"] == 5  # all but the hit


async def test_bad_directives_are_400s(engine: Engine, upstream: FakeLLMServer) -> None:
    client = Client()
    for headers, body in [
        ({"X-Orchestrator-Cache": "sometimes"}, {}),
        ({"X-Orchestrator-Cache": ""}, {}),
        ({}, {"cache": {"mode": "always"}}),
        ({}, {"cache": {"max_age": -1}}),
        ({}, {"cache": {"ttl": 0}}),
        ({}, {"cache": {"ttl": True}}),
        ({}, {"cache": {"tll": 5}}),
        ({}, {"cache": "force"}),
    ]:
        response = await database_sync_to_async(client.post)(
            "/api/v1/infer",
            json.dumps({"prompt": "p", **body}),
            content_type="application/json",
            headers=headers,
        )
        assert response.status_code == 400, (headers, body)
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_an_owner_deletes_an_entry_and_staff_flush_everything(
    engine: Engine, upstream: FakeLLMServer, admin_client: Client
) -> None:
    client = Client()
    send = database_sync_to_async(post)
    key = (await result(client, await send(client))).headers["X-Orchestrator-Cache-Key"]
    forget = database_sync_to_async(client.delete)
    assert (await forget(f"/api/v1/cache/{key}")).status_code == 204
    assert (await forget(f"/api/v1/cache/{key}")).status_code == 404
    assert (await forget("/api/v1/cache/not-a-key")).status_code == 404
    assert (await result(client, await send(client))).json()["cache_status"] == "stored"
    assert (await result(client, await send(client))).json()["cache_status"] == "hit"
    stats = (await database_sync_to_async(admin_client.get)("/api/v1/cache/stats")).json()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 2
    assert stats["hit_rate"] == pytest.approx(1 / 3)
    assert stats["saved_tokens"] > 0
    flushed = (await database_sync_to_async(admin_client.delete)("/api/v1/cache")).json()
    assert flushed == {"epoch": stats["epoch"] + 1, "entries_removed": 1}
    after = await result(client, await send(client))
    assert after.json()["cache_status"] == "stored"
    assert after.headers["X-Orchestrator-Cache-Key"] != key  # a new epoch, a new key
    assert (await database_sync_to_async(client.delete)("/api/v1/cache")).status_code in (401, 403)
