"""GET /api/v1/status/<id> and /api/v1/result/<id> (with ?wait long-poll)."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.test import AsyncClient, Client

from inference.models import InferenceRequest
from pipeline.worker import Engine
from tests.conftest import asubmit, finished, submit


@pytest.mark.django_db
def test_status_returns_the_request(client: Client) -> None:
    request = submit("hi", session_id="s1", metadata={"a": 1})
    body = client.get(f"/api/v1/status/{request.pk}").json()
    assert body["request_id"] == str(request.pk)
    assert (body["session_id"], body["status"], body["metadata"]) == ("s1", "pending", {"a": 1})


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["status", "result"])
@pytest.mark.parametrize(
    "request_id", ["0b6f3c2e-3f7e-4a39-9a0b-1d1b5f0f9a11", "not-a-uuid", "1234", "%20"]
)
def test_an_unknown_or_malformed_id_is_a_json_404(
    client: Client, route: str, request_id: str
) -> None:
    response = client.get(f"/api/v1/{route}/{request_id}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.django_db
def test_result_is_202_while_pending(client: Client) -> None:
    request = submit()
    response = client.get(f"/api/v1/result/{request.pk}")
    assert response.status_code == 202
    assert response.json()["status"] == "pending"


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "expired"])
def test_result_is_200_once_terminal(client: Client, status: str) -> None:
    request = submit()
    InferenceRequest.objects.filter(pk=request.pk).update(status=status, result="done")
    response = client.get(f"/api/v1/result/{request.pk}")
    assert response.status_code == 200
    assert response.json()["status"] == status


@pytest.mark.django_db
def test_a_wait_on_a_request_that_does_not_finish_returns_202_after_the_wait(
    client: Client,
) -> None:
    request = submit()
    began = time.monotonic()
    response = client.get(f"/api/v1/result/{request.pk}?wait=0.3")
    assert response.status_code == 202
    assert time.monotonic() - began >= 0.3


@pytest.mark.django_db
def test_the_wait_is_capped_by_the_server(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_RESULT_WAIT_MAX_SECONDS = 0.2
    request = submit()
    began = time.monotonic()
    assert client.get(f"/api/v1/result/{request.pk}?wait=60").status_code == 202
    assert time.monotonic() - began < 5


@pytest.mark.django_db
@pytest.mark.parametrize("wait", ["soon", "-3", "nan", "inf", ""])
def test_a_nonsense_wait_is_a_400(client: Client, wait: str) -> None:
    """The schema promises a number >= 0; ignoring junk would hide a client's bug."""
    request = submit()
    response = client.get(f"/api/v1/result/{request.pk}?wait={wait}")
    assert response.status_code == 400 and response.json()["error"]["param"] == "wait"


@pytest.mark.django_db(transaction=True)
async def test_long_poll_returns_the_result_as_soon_as_it_is_ready(engine: Engine) -> None:
    request = await asubmit("one two three four five six", backend="slow-echo")
    began = time.monotonic()
    response = await AsyncClient().get(f"/api/v1/result/{request.pk}?wait=10")
    elapsed = time.monotonic() - began
    assert response.status_code == 200
    assert response.json()["result"] == "one two three four five six"
    assert elapsed < 5  # woke on the finish event, not at the end of the wait


@pytest.mark.django_db(transaction=True)
async def test_the_seed_poll_loop_gets_the_completed_result(engine: Engine) -> None:
    client = AsyncClient()
    submitted = await client.post(
        "/api/v1/infer", {"prompt": "What is Rust?"}, content_type="application/json"
    )
    request_id = submitted.json()["request_id"]
    await finished(request_id)
    for _ in range(50):  # the seed's client: poll until 200
        result = await client.get(f"/api/v1/result/{request_id}")
        if result.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert result.status_code == 200
    assert result.json()["status"] == "completed"
    assert result.json()["result"] == "What is Rust?"


@pytest.mark.django_db
def test_the_quick_rendering_of_a_request_is_drfs_own() -> None:
    """The serializers render a row by hand (DRF's per-instance copy of every
    field was half a call's CPU): the same keys, order and values as DRF's."""
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework import serializers

    from inference.serializers import InferenceRequestSerializer, StreamableRequestSerializer

    pending = submit("hi")
    done = submit("there", metadata={"a": [1, {"b": None}]}, max_tokens=5, stop=["x"])
    now = timezone.now()
    InferenceRequest.objects.filter(pk=done.pk).update(
        status="completed",
        result="there",
        started_at=now,
        finished_at=now + timedelta(milliseconds=1234),
        timings={"rag": 0.001, "inference": 2},
        passages=[{"title": "t", "text": "x", "score": 1.5}],
        messages=[{"role": "user", "content": "there"}],
        prompt_tokens=3,
        completion_tokens=1,
        skipped_stages=["rag"],
        config_hash="abc123",
    )
    for row in (pending, InferenceRequest.objects.get(pk=done.pk)):
        for serializer_class in (InferenceRequestSerializer, StreamableRequestSerializer):
            quick = serializer_class(row).data
            drf = serializers.Serializer.to_representation(serializer_class(row), row)
            assert list(quick) == list(drf)
            same = {key: value for key, value in quick.items() if key != "stream_token"}
            assert same == {key: drf[key] for key in same}


@pytest.mark.django_db
def test_a_pending_requests_status_says_its_place_in_the_queue(client: Client) -> None:
    first, later = submit("first"), submit("later")
    urgent = submit("urgent", priority=9)
    positions = {
        request.prompt: client.get(f"/api/v1/status/{request.pk}").json()["queue_position"]
        for request in (first, later, urgent)
    }
    assert positions == {"urgent": 1, "first": 2, "later": 3}
    InferenceRequest.objects.filter(pk=urgent.pk).update(status="processing")
    assert client.get(f"/api/v1/status/{urgent.pk}").json()["queue_position"] is None
    assert client.get(f"/api/v1/status/{first.pk}").json()["queue_position"] == 1
