"""The fenced state machine of InferenceRequest (DESIGN §4)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inference.models import InferenceRequest, Outcome, StreamChunk
from tests.conftest import submit

pytestmark = pytest.mark.django_db

OUTCOME = Outcome(
    result="ok", prompt_tokens=1, completion_tokens=1, timings={}, backend_used="echo"
)
claim = InferenceRequest.objects.claim_next


def expire_lease(request: InferenceRequest) -> None:
    InferenceRequest.objects.filter(pk=request.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def test_claim_takes_the_pending_request_and_starts_attempt_one() -> None:
    request = submit()
    claimed = claim("worker-a", 30)
    assert claimed is not None and claimed.pk == request.pk
    assert claimed.status == "processing"
    assert claimed.attempt == 1
    assert claimed.lease_owner == "worker-a"
    assert claimed.lease_expires_at > timezone.now()
    assert claim("worker-b", 30) is None


def test_claim_order_is_priority_then_age() -> None:
    low_old = submit("a", priority=1)
    high_new = submit("b", priority=9)
    normal = submit("c", priority=5)
    order = [claim("w", 30).pk for _ in range(3)]
    assert order == [high_new.pk, normal.pk, low_old.pk]


def test_claim_skips_requests_past_their_deadline() -> None:
    request = submit()
    InferenceRequest.objects.filter(pk=request.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert claim("w", 30) is None


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_to_claim_one_request_exactly_one_wins() -> None:
    submit()
    barrier = threading.Barrier(8)
    winners: list[InferenceRequest] = []

    def race() -> None:
        barrier.wait()
        try:
            won = claim(f"w{threading.get_ident()}", 30)
            if won is not None:
                winners.append(won)
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert InferenceRequest.objects.get().attempt == 1


def test_a_stale_attempt_cannot_complete() -> None:
    request = submit()
    first = claim("w1", 30)
    expire_lease(first)
    assert InferenceRequest.objects.reclaim_expired_leases() == (1, 0)
    second = claim("w2", 30)
    assert second.attempt == 2
    assert InferenceRequest.objects.complete(request.pk, first.attempt, OUTCOME) is None
    assert not InferenceRequest.objects.heartbeat(request.pk, first.attempt, 30)
    assert InferenceRequest.objects.complete(request.pk, second.attempt, OUTCOME) is not None
    assert InferenceRequest.objects.get(pk=request.pk).status == "completed"


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_terminal_states_never_change(end: str) -> None:
    request = submit()
    held = claim("w", 30)
    requests = InferenceRequest.objects
    if end == "complete":
        assert requests.complete(request.pk, held.attempt, OUTCOME) is not None
    elif end == "fail":
        assert requests.fail(request.pk, held.attempt, "backend_error", "x") is not None
    else:
        assert requests.cancel(request.pk)
    before = requests.get(pk=request.pk)
    assert requests.complete(request.pk, held.attempt, OUTCOME) is None
    assert requests.fail(request.pk, held.attempt, "internal_error", "y") is None
    assert not requests.cancel(request.pk)
    assert not requests.heartbeat(request.pk, held.attempt, 30)
    assert not requests.release(request.pk, held.attempt)
    expire_lease(before)
    requests.reclaim_expired_leases()
    requests.filter(pk=request.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    requests.expire_overdue()
    after = requests.get(pk=request.pk)
    assert (after.status, after.result, after.error) == (before.status, before.result, before.error)


def test_an_expired_lease_is_reclaimed_then_run_again() -> None:
    request = submit()
    expire_lease(claim("w1", 30))
    assert InferenceRequest.objects.reclaim_expired_leases() == (1, 0)
    row = InferenceRequest.objects.get(pk=request.pk)
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("pending", "", None)
    assert claim("w2", 30).attempt == 2


def test_a_claim_run_again_starts_its_stream_over_and_a_first_claim_deletes_nothing() -> None:
    request = submit()
    first = claim("w1", 30)
    assert first.append_chunks(0, ["a", "b"]) == [(request.pk, 1)]
    expire_lease(first)
    InferenceRequest.objects.reclaim_expired_leases()
    with CaptureQueriesContext(connection) as again:
        assert claim("w2", 30).attempt == 2
    assert not StreamChunk.objects.filter(request_id=request.pk).exists()
    assert any(q["sql"].startswith("DELETE") for q in again.captured_queries)

    submit()
    with CaptureQueriesContext(connection) as fresh:
        assert claim("w3", 30).attempt == 1
    assert not any(q["sql"].startswith("DELETE") for q in fresh.captured_queries)


def test_an_expired_lease_fails_with_worker_lost_once_attempts_are_spent() -> None:
    request = submit()
    for _ in range(request.max_attempts):
        expire_lease(claim("w", 30))
        InferenceRequest.objects.reclaim_expired_leases()
    row = InferenceRequest.objects.get(pk=request.pk)
    assert row.status == "failed"
    assert row.error_code == "worker_lost"
    assert row.attempt == row.max_attempts


def test_a_live_lease_is_not_reclaimed() -> None:
    submit()
    claim("w", 30)
    assert InferenceRequest.objects.reclaim_expired_leases() == (0, 0)


def test_requests_past_their_deadline_expire() -> None:
    waiting = submit()
    running = submit()
    claim("w", 30)
    InferenceRequest.objects.update(deadline_at=timezone.now() - timedelta(seconds=1))
    assert InferenceRequest.objects.expire_overdue() == 2
    for request in (waiting, running):
        row = InferenceRequest.objects.get(pk=request.pk)
        assert (row.status, row.error_code) == ("expired", "deadline_exceeded")


def test_chunks_are_fenced_on_the_attempt() -> None:
    submit()
    first = claim("w1", 30)
    assert first.append_chunks(0, ["a", "b"])
    expire_lease(first)
    InferenceRequest.objects.reclaim_expired_leases()
    second = claim("w2", 30)
    # The new attempt starts from an empty stream; the old one can write nothing.
    assert not StreamChunk.objects.exists()
    assert not first.append_chunks(2, ["c"])
    assert second.append_chunks(0, ["x"])
    chunks = list(StreamChunk.objects.values_list("seq", "text", "attempt"))
    assert chunks == [(0, "x", 2)]
    assert InferenceRequest.objects.get().last_seq == 0


def test_release_hands_a_held_request_back_to_the_queue() -> None:
    request = submit()
    held = claim("w", 30)
    assert InferenceRequest.objects.release(request.pk, held.attempt)
    assert claim("w2", 30).pk == request.pk
