"""In-flight dedup: identical requests share one backend call, each keeps its own
durable stream, and cancelling or losing the one that generates hurts no one else."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from harness.fake_llm_server import FakeLLMServer
from inference import metrics, services
from inference.models import CacheStatus, InferenceRequest, Outcome, Status, StreamChunk
from inference.streaming import Token, follow
from pipeline.worker import Engine
from tests.conftest import finished, submit, tokens_of

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "one two three four five six seven eight"
WORDS = ["one", " two", " three", " four", " five", " six", " seven", " eight"]


async def submit_many(n: int, **fields: Any) -> list[InferenceRequest]:
    """``n`` identical requests, all committed before the engine claims any (its
    database calls queue behind this one on the same thread)."""
    fields = {"temperature": 0.0, "backend": "upstream-slow", **fields}
    return await database_sync_to_async(lambda: [submit(PROMPT, **fields) for _ in range(n)])()


async def started(request_id: uuid.UUID) -> None:
    async for event in follow(request_id):
        if isinstance(event, Token):
            return


def leader_of(requests: list[InferenceRequest]) -> InferenceRequest:
    ids = [r.pk for r in requests]
    return InferenceRequest.objects.get(pk__in=ids, dedup_key__isnull=False, status="processing")


async def generating_with_followers(n: int) -> tuple[list[InferenceRequest], InferenceRequest]:
    """``n`` identical requests, once the leader streams and the rest follow it."""
    requests = await submit_many(n)
    await started(requests[0].pk)
    leader = await database_sync_to_async(leader_of)(requests)
    await wait_for_followers(leader.pk, n - 1)
    return requests, leader


async def wait_for_followers(leader_id: uuid.UUID, n: int) -> None:
    count = database_sync_to_async(
        lambda: InferenceRequest.objects.filter(
            coalesced_into=leader_id, status="processing"
        ).count()
    )
    for _ in range(200):
        if await count() >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} followers attached")


async def test_fifty_identical_requests_make_one_upstream_call(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    followers_before = metrics.DEDUP.labels("follower")._value.get()
    requests = await submit_many(50)
    streams = await asyncio.gather(*(tokens_of(r.pk) for r in requests))
    done = [await finished(r.pk) for r in requests]
    assert upstream.calls["slow"] == 1
    assert {r.status for r in done} == {Status.COMPLETED}
    assert {r.result for r in done} == {PROMPT}
    assert all(stream == WORDS for stream in streams)
    # Those claimed while it generated followed it; any claimed after it finished
    # were answered from the cache: either way, from the one call.
    statuses = [r.cache_status for r in done]
    assert statuses.count(CacheStatus.STORED) == 1
    assert statuses.count(CacheStatus.COLLAPSED) + statuses.count(CacheStatus.HIT) == 49
    assert statuses.count(CacheStatus.COLLAPSED) >= 25
    leader = next(r for r in done if r.cache_status == CacheStatus.STORED)
    assert {r.cache_source_id for r in done if r.pk != leader.pk} == {leader.pk}
    followed = metrics.DEDUP.labels("follower")._value.get() - followers_before
    assert followed == statuses.count(CacheStatus.COLLAPSED)
    assert all(r.usage == leader.usage for r in done)


async def test_a_late_follower_gets_the_stream_so_far_then_the_rest(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    [first] = await submit_many(1)
    await started(first.pk)
    await asyncio.sleep(0.15)  # a few words in
    [late] = await submit_many(1)
    assert await tokens_of(late.pk) == WORDS
    assert (await finished(late.pk)).cache_status == CacheStatus.COLLAPSED
    assert upstream.calls["slow"] == 1


async def test_cancelling_the_leader_hands_the_call_to_a_follower(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    requests, leader = await generating_with_followers(3)
    await database_sync_to_async(services.cancel_request)(leader.pk)
    cancelled_at = time.monotonic()
    others = [r for r in requests if r.pk != leader.pk]
    streams = await asyncio.gather(*(tokens_of(r.pk) for r in others))
    done = [await finished(r.pk) for r in others]
    assert [r.status for r in done] == [Status.COMPLETED] * 2
    assert all(stream == WORDS for stream in streams) and {r.result for r in done} == {PROMPT}
    assert (await finished(leader.pk)).status == Status.CANCELLED
    assert upstream.calls["slow"] == 1
    # The upstream call ran to its end: no disconnect before the last word was due.
    assert upstream.disconnected_at - cancelled_at > 0.1
    successor = next(r for r in done if r.cache_status == CacheStatus.STORED)
    assert successor.pk == min(others, key=lambda r: r.created_at).pk


async def test_cancelling_everyone_disconnects_the_upstream_at_once(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    requests, leader = await generating_with_followers(3)
    for request in [*(r for r in requests if r.pk != leader.pk), leader]:
        await database_sync_to_async(services.cancel_request)(request.pk)
    cancelled_at = time.monotonic()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1)
    assert upstream.disconnected_at - cancelled_at < 1
    assert {(await finished(r.pk)).status for r in requests} == {Status.CANCELLED}


async def test_cancelling_a_follower_leaves_the_others_alone(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    requests, leader = await generating_with_followers(3)
    follower = next(r for r in requests if r.pk != leader.pk)
    await database_sync_to_async(services.cancel_request)(follower.pk)
    done = [await finished(r.pk) for r in requests]
    assert [r.status for r in done].count(Status.COMPLETED) == 2
    assert (await finished(follower.pk)).status == Status.CANCELLED
    assert upstream.calls["slow"] == 1


async def test_what_differs_or_is_sampled_is_not_coalesced(
    engine: Engine,
    upstream: FakeLLMServer,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    await asyncio.gather(
        *(
            finished(r.pk)
            for r in [
                *await submit_many(1),
                *await submit_many(1, max_tokens=5),
                *await submit_many(2, temperature=None),
            ]
        )
    )
    assert upstream.calls["slow"] == 4
    settings.ORCHESTRATOR_DEDUP_SAMPLED = True
    sampled = await submit_many(2, temperature=0.8)
    done = [await finished(r.pk) for r in sampled]
    # Coalesced, but a sample is never stored for later requests.
    assert sorted(r.cache_status for r in done) == [CacheStatus.COLLAPSED, CacheStatus.MISS]
    assert all(r.cache_expires_at is None for r in done)
    assert upstream.calls["slow"] == 5


async def test_a_leader_that_fails_midway_sends_its_followers_off_alone(
    engine: Engine,
    upstream: FakeLLMServer,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    """A mid-stream failure may not happen again: followers run as their own requests."""
    settings.ORCHESTRATOR_BACKENDS["flaky"] = {
        "class": "tests.backends.FailingBackend",
        "options": {"tokens_before": 3, "delay": 0.1},
    }
    requests = await submit_many(3, backend="flaky")
    done = [await finished(r.pk) for r in requests]
    assert {r.status for r in done} == {Status.FAILED}
    attempts = sorted(r.attempt for r in done)
    assert attempts[0] == 1 and attempts[-1] >= 2  # the detached ones ran again


# --- the lifecycle underneath, step by step ----------------------------------------------

OUTCOME = Outcome(
    result="answer",
    prompt_tokens=2,
    completion_tokens=3,
    timings={},
    backend_used="echo",
    cache_key="k" * 64,
    cache_status=CacheStatus.STORED,
)


def claim(owner: str) -> InferenceRequest:
    [row] = InferenceRequest.objects.claim_batch(owner, 30, 1)
    return row


def leader_and_follower() -> list[tuple[InferenceRequest, InferenceRequest]]:
    """Two identical requests, claimed (as submitted, as held): a leader, a follower."""
    rows = [submit("p"), submit("p")]
    held = [claim("w1"), claim("w2")]
    for row in held:
        InferenceRequest.objects.lead_or_follow(row.pk, row.attempt, "k" * 64, 64)
    return list(zip(rows, held, strict=True))


def test_one_leader_per_key_and_a_follower_completes_with_it() -> None:
    a, b = submit("p"), submit("p")
    la, lb = claim("w1"), claim("w2")
    requests = InferenceRequest.objects
    assert requests.lead_or_follow(la.pk, la.attempt, "k" * 64, 64) == ("leader", None)
    assert requests.lead_or_follow(lb.pk, lb.attempt, "k" * 64, 64) == ("follower", a.pk)
    la.append_chunks(0, ["ans", "wer"], mirror=True)
    chunks = StreamChunk.objects.filter(request_id=b.pk).order_by("seq")
    assert [(c.seq, c.text, c.attempt) for c in chunks] == [(0, "ans", 1), (1, "wer", 1)]
    assert not requests.heartbeat(b.pk, lb.attempt, 30)  # no worker holds a follower
    assert requests.complete(la.pk, la.attempt, OUTCOME) == [(b.pk, "rest")]
    b.refresh_from_db()
    assert (b.status, b.result, b.cache_status, b.cache_source_id) == (
        Status.COMPLETED,
        "answer",
        CacheStatus.COLLAPSED,
        a.pk,
    )


def test_the_fan_out_is_bounded() -> None:
    rows = [submit("p") for _ in range(3)]
    held = [claim(f"w{i}") for i in range(3)]
    requests = InferenceRequest.objects
    roles = [requests.lead_or_follow(r.pk, r.attempt, "k" * 64, 1)[0] for r in held]
    assert roles == ["leader", "follower", "overflow"]
    assert InferenceRequest.objects.get(pk=rows[2].pk).dedup_key is None


def test_a_crashed_leader_runs_again_with_its_followers_still_attached() -> None:
    (a, la), (b, _lb) = leader_and_follower()
    requests = InferenceRequest.objects
    la.append_chunks(0, ["half"], mirror=True)
    requests.filter(pk=a.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert requests.reclaim_expired_leases() == (1, 0)
    assert requests.release_orphans() == 0  # its leader is only pending
    again = claim("w3")
    assert again.pk == a.pk and again.attempt == 2
    b.refresh_from_db()
    assert (b.status, b.coalesced_into_id, b.attempt, b.last_seq) == ("processing", a.pk, 2, -1)
    assert not StreamChunk.objects.filter(request_id__in=[a.pk, b.pk]).exists()
    # Its key came back with it: it leads again, and the follower gets the new stream.
    assert requests.lead_or_follow(a.pk, 2, "k" * 64, 64) == ("leader", None)
    again.append_chunks(0, ["whole"], mirror=True)
    assert list(StreamChunk.objects.filter(request_id=b.pk).values_list("text", "attempt")) == [
        ("whole", 2)
    ]


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_failed_leader_fails_or_frees_its_followers(deterministic: bool) -> None:
    (_, la), (b, _) = leader_and_follower()
    requests = InferenceRequest.objects
    failed = requests.fail(la.pk, la.attempt, "upstream_http_400", "no", deterministic)
    b.refresh_from_db()
    if deterministic:
        assert failed == [(b.pk, "rest")]
        assert (b.status, b.error_code) == (Status.FAILED, "upstream_http_400")
    else:
        assert failed == []
        assert (b.status, b.coalesced_into_id, b.cache_status) == (
            Status.PENDING,
            None,
            CacheStatus.DETACHED,
        )


def test_the_reaper_frees_followers_of_a_leader_that_ended_without_them() -> None:
    (a, _la), (b, _lb) = leader_and_follower()
    requests = InferenceRequest.objects
    requests.filter(pk=a.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    b_deadline = timezone.now() + timedelta(minutes=5)
    requests.filter(pk=b.pk).update(deadline_at=b_deadline)
    assert requests.expire_overdue() == 1
    assert requests.release_orphans() == 1
    b.refresh_from_db()
    assert (b.status, b.cache_status) == (Status.PENDING, CacheStatus.DETACHED)


def test_leadership_is_decided_once_among_concurrent_attempts() -> None:
    """Threads racing on SQLite (the services suite repeats this on PostgreSQL)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    rows = [submit("p") for _ in range(8)]
    held = [claim(f"w{i}") for i in range(8)]

    def attempt(row: InferenceRequest) -> str:
        try:
            return InferenceRequest.objects.lead_or_follow(row.pk, row.attempt, "r" * 64, 64)[0]
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        roles = list(pool.map(attempt, held))
    assert sorted(roles) == ["follower"] * 7 + ["leader"]
    assert len(rows) == 8


async def test_cancels_that_chain_through_hand_overs_still_stop_the_upstream(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    """Leader, then its successor, then the last: the worker hears of each hand-over
    at once, so the last cancel reaches the task generating (within 1 s)."""
    requests, leader = await generating_with_followers(3)
    order = [
        leader,
        *sorted((r for r in requests if r.pk != leader.pk), key=lambda r: r.created_at),
    ]
    for request in order:
        await database_sync_to_async(services.cancel_request)(request.pk)
    cancelled_at = time.monotonic()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1)
    assert upstream.disconnected_at - cancelled_at < 1
    assert {(await finished(r.pk)).status for r in requests} == {Status.CANCELLED}


def test_a_successor_is_found_by_its_key_even_once_the_cancelled_leader_is_gone() -> None:
    (a, _la), (b, _) = leader_and_follower()
    services.cancel_request(a.pk)
    InferenceRequest.objects.filter(pk=a.pk).delete()
    successor = InferenceRequest.objects.successor("k" * 64, "w1")
    assert successor is not None and successor.pk == b.pk
    assert InferenceRequest.objects.successor("k" * 64, "another-worker") is None


def test_a_leader_run_again_that_cannot_lead_still_streams_to_its_followers(settings) -> None:  # type: ignore[no-untyped-def]
    """It lost its key while it was requeued; the new leader is full (overflow): it
    generates alone, but the followers it kept must still get its stream."""
    from pipeline.cache import key_for, policy_for
    from pipeline.chunks import ChunkWriter
    from pipeline.context import PipelineContext, RequestSnapshot
    from pipeline.stages.cache import decide

    settings.ORCHESTRATOR_DEDUP_MAX_FOLLOWERS = 1
    requests = InferenceRequest.objects

    def context(row: InferenceRequest) -> PipelineContext:
        ctx = PipelineContext(RequestSnapshot.from_request(row), ChunkWriter(row, 32, 0.05))
        ctx.messages = [{"role": "user", "content": "p"}]
        return ctx

    first, follower = submit("p", temperature=0.0), submit("p", temperature=0.0)
    la, lf = claim("w1"), claim("w2")
    key = key_for(context(la))
    requests.lead_or_follow(la.pk, la.attempt, key, 1)
    requests.lead_or_follow(lf.pk, lf.attempt, key, 1)
    requests.filter(pk=first.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    requests.reclaim_expired_leases()
    # Two newer ones (claimed first: higher priority) take the key and fill it.
    for owner in ("w3", "w4"):
        submit("p", temperature=0.0, priority=9)
        row = claim(owner)
        requests.lead_or_follow(row.pk, row.attempt, key, 1)
    again = claim("w5")
    assert again.pk == first.pk
    ctx = context(again)
    policy = policy_for(ctx.request, cache_on=True, dedup_on=True)
    decide(ctx, policy)
    assert ctx.cache_status == CacheStatus.MISS and ctx.following is None
    assert again.append_chunks(0, ["alone"], mirror=ctx.sink.mirror) is not None
    follower.refresh_from_db()
    assert list(
        StreamChunk.objects.filter(request_id=follower.pk).values_list("text", "attempt")
    ) == [("alone", follower.attempt)]
    assert follower.max_attempts == 4  # the restart did not spend its own tries
