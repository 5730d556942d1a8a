"""The response cache and in-flight dedup on PostgreSQL + Redis, across processes:
the database decides leadership, any worker serves any stored answer, and Redis
plays no part in either (so its outage changes nothing)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.db import connection
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from harness.outages import start_redis, stop_redis
from inference.models import InferenceRequest
from inference.services import Submission, submit_request
from tests.services.conftest import Stack

pytestmark = pytest.mark.services

ASK = {"prompt": "is the cache shared", "temperature": 0}


def answer(stack: Stack, body: dict, timeout: float = 30) -> dict:
    """Submit, then poll the result (short polls: they never hold a connection)."""
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        response = client.post("/api/v1/infer", json=body)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = client.get(f"/api/v1/result/{request_id}")
            if result.status_code == 200:
                return {**result.json(), "headers": dict(result.headers)}
            time.sleep(0.05)
    raise AssertionError(f"{request_id} did not finish")


def test_any_worker_serves_an_answer_another_stored(stack: Stack, db_access) -> None:  # type: ignore[no-untyped-def]
    stack.start_worker(concurrency=4)
    stack.start_worker(concurrency=4)
    try:
        source = answer(stack, ASK)
        assert source["cache_status"] == "stored"
        source_worker = InferenceRequest.objects.get(pk=source["request_id"]).lease_owner
        for _ in range(30):  # until a hit was claimed by the other worker
            hit = answer(stack, ASK)
            assert hit["cache_status"] == "hit" and hit["cache_source"] == source["request_id"]
            assert hit["result"] == source["result"]
            if InferenceRequest.objects.get(pk=hit["request_id"]).lease_owner != source_worker:
                break
        else:
            raise AssertionError("every hit was claimed by the worker that stored the answer")
    finally:
        stack.stop_workers()


def test_with_redis_down_the_cache_still_answers(stack: Stack, db_access) -> None:  # type: ignore[no-untyped-def]
    stack.start_worker(concurrency=4)
    body = {**ASK, "prompt": "redis is down"}
    try:
        stop_redis()
        # No doorbell and no group events: workers and readers poll the database.
        first = answer(stack, body, timeout=60)
        second = answer(stack, body, timeout=60)
    finally:
        start_redis()
        stack.stop_workers()
    assert first["status"] == second["status"] == "completed"
    assert (first["cache_status"], second["cache_status"]) == ("stored", "hit")
    assert second["headers"]["cache-status"] == "orchestrator; hit"


def claimed_copies(n: int) -> list[InferenceRequest]:
    rows = [
        submit_request(Submission(prompt="race", params={"temperature": 0.0}))[0] for _ in range(n)
    ]
    taken = InferenceRequest.objects.claim_batch("test-worker", 30, n)
    assert {r.pk for r in taken} == {r.pk for r in rows}
    return taken


# (db_access only unblocks the database: sharing it across examples is what is meant)
@hypothesis_settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=2, max_value=12))
def test_concurrent_leadership_attempts_elect_exactly_one_leader(db_access, n: int) -> None:  # type: ignore[no-untyped-def]
    """Each attempt on its own connection, released together: PostgreSQL's partial
    unique index admits one processing row per key, whatever the interleaving."""
    InferenceRequest.objects.filter(prompt="race").delete()
    rows = claimed_copies(n)
    key = f"{n:064x}"
    start = threading.Barrier(n)
    roles: list[str] = []

    def attempt(row: InferenceRequest) -> None:
        try:
            start.wait()
            roles.append(InferenceRequest.objects.lead_or_follow(row.pk, row.attempt, key, 64)[0])
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(roles) == ["follower"] * (n - 1) + ["leader"]
    leader = InferenceRequest.objects.get(dedup_key=key)
    assert InferenceRequest.objects.filter(coalesced_into=leader).count() == n - 1
    InferenceRequest.objects.filter(pk__in=[r.pk for r in rows]).update(status="cancelled")
