"""Admission control: a full queue is a 503, a busy client a 429, both with Retry-After."""

from __future__ import annotations

import json

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import Client

from inference.models import InferenceRequest
from inference.routing import websocket_urlpatterns
from tests.conftest import submit

pytestmark = pytest.mark.django_db


def post(client: Client, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/infer",
        json.dumps({"prompt": "x"}),
        content_type="application/json",
        headers=headers,
    )


def test_a_full_queue_is_a_503_with_retry_after(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_PENDING = 3
    for _ in range(3):
        assert post(client).status_code == 202
    refused = post(client)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert int(refused["retry-after-ms"]) == int(refused["Retry-After"]) * 1000
    assert InferenceRequest.objects.count() == 3


def test_retry_after_follows_the_backlog_and_the_recent_completion_rate(
    client: Client, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_PENDING = 30
    for _ in range(30):
        submit()
    assert int(post(client)["Retry-After"]) == 60  # nothing completed lately: assume slow
    done = InferenceRequest.objects.all()[:15]
    for row in done:  # 15 completions in the last minute: 0.25/s
        InferenceRequest.objects.filter(pk=row.pk).update(
            status="completed", finished_at=row.created_at
        )
    settings.ORCHESTRATOR_MAX_PENDING = 15
    assert int(post(client)["Retry-After"]) == 60  # 15 waiting / 0.25 per s, capped to 60


def test_a_client_with_too_many_in_flight_gets_a_429(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_IN_FLIGHT = 2
    assert [post(client).status_code for _ in range(2)] == [202, 202]
    refused = post(client)
    assert refused.status_code == 429 and refused["Retry-After"]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "too_many_in_flight"
    assert refused["RateLimit-Policy"] == '"in_flight";q=2'
    assert refused["RateLimit"] == f'"in_flight";r=0;t={refused["Retry-After"]}'
    other = client.post(
        "/api/v1/infer", {"prompt": "x"}, content_type="application/json", REMOTE_ADDR="10.9.9.9"
    )
    assert other.status_code == 202  # another client is not affected
    InferenceRequest.objects.filter(client_ip="127.0.0.1").update(status="completed")
    assert post(client).status_code == 202  # finished work frees the slots


def test_an_idempotent_replay_is_not_refused(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    assert post(client, **{"Idempotency-Key": "k"}).status_code == 202
    settings.ORCHESTRATOR_MAX_PENDING = 1
    assert post(client, **{"Idempotency-Key": "k"}).status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_submit_is_refused_with_an_error_message(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_PENDING = 1
    socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/api/v1/ws")
    await socket.connect()
    await socket.send_json_to({"prompt": "a", "stream": False})
    assert (await socket.receive_json_from())["type"] == "ack"
    await socket.send_json_to({"prompt": "b"})
    refused = await socket.receive_json_from()
    assert refused["error"]["code"] == "queue_full" and refused["error"]["retry_after"] >= 1
    await socket.disconnect()
