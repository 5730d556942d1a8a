"""Rate limits per caller (embedded mode: the in-process store): requests per
minute on REST, WebSocket submits and SSE connections; requests in flight; open
streams; WebSocket messages per second. Every 429 says when to come back.
The same limits across two web processes sharing Redis: tests/services."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils import timezone

from inference import admission, counters
from inference.auth import Caller
from inference.routing import websocket_urlpatterns
from tests.conftest import submit
from tests.keys import bearer, make_key
from tests.sse import SSEClient

pytestmark = pytest.mark.django_db


def get(client: Client, secret: str, path: str = "/api/v1/requests/"):  # type: ignore[no-untyped-def]
    return client.get(path, headers=bearer(secret))


def test_each_response_carries_the_quota_and_the_429_says_when(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 3
    _, secret = make_key()
    responses = [get(client, secret) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r["x-ratelimit-remaining-requests"] for r in responses] == ["2", "1", "0", "0"]
    refused = responses[-1]
    reset = int(refused["Retry-After"])
    assert 1 <= reset <= 60
    assert refused["RateLimit-Policy"] == '"requests";q=3;w=60'
    assert refused["RateLimit"] == f'"requests";r=0;t={reset}'
    assert refused["x-ratelimit-limit-requests"] == "3"
    assert refused["x-ratelimit-reset-requests"] == f"{reset}s"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_each_key_has_its_own_budget_and_may_override_it(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 1
    _, small = make_key("small")
    _, big = make_key("big", requests_per_minute=5)
    assert [get(client, small).status_code for _ in range(2)] == [200, 429]
    assert [get(client, big).status_code for _ in range(5)] == [200] * 5
    assert get(client, big)["RateLimit-Policy"] == '"requests";q=5;w=60'


def test_anonymous_callers_are_limited_per_address(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 1
    assert client.get("/api/v1/requests/").status_code == 200
    assert client.get("/api/v1/requests/").status_code == 429
    assert client.get("/api/v1/requests/", REMOTE_ADDR="10.0.0.9").status_code == 200


def test_cors_lets_browsers_read_the_rate_limit_headers(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 5
    _, secret = make_key()
    response = client.get(
        "/api/v1/requests/", headers={**bearer(secret), "Origin": "https://app.example"}
    )
    exposed = {h.strip().lower() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"retry-after", "ratelimit", "ratelimit-policy", "x-ratelimit-reset-requests"} <= exposed


def test_in_flight_slots_are_per_key_and_freed_by_finishing(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    _, secret = make_key(max_in_flight=1)
    post = lambda: client.post(  # noqa: E731
        "/api/v1/infer", {"prompt": "x"}, "application/json", headers=bearer(secret)
    )
    first = post()
    assert first.status_code == 202
    busy = post()
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_in_flight"
    assert busy["RateLimit"].startswith('"in_flight";r=0;')
    from inference.models import InferenceRequest

    InferenceRequest.objects.filter(pk=first.json()["request_id"]).update(status="completed")
    assert post().status_code == 202


def test_the_memory_store_counts_atomically_under_threads() -> None:
    store = counters.MemoryStore()
    allowed = []

    def take() -> None:
        slot = counters.Slot("k", str(uuid.uuid4()), limit=10, expires=9e9)
        held, _ = store.admit(slot, counters.Clock("k:5", 0), now=0)
        allowed.append(held > 0)

    threads = [threading.Thread(target=take) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 10
    late = counters.Slot("k", "late", limit=10, expires=20)
    assert store.admit(late, counters.Clock("k:5", 0), now=9e9 + 1) == (1, 9e9 + 1)  # all expired


def test_limits_fail_open_when_redis_is_unreachable(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 1
    settings.ORCHESTRATOR_MAX_IN_FLIGHT = 1
    admission.reset()
    caller = Caller(ip="10.1.1.1")
    assert admission.check_rate(caller) is None
    now = timezone.now()
    arrival = admission.Arrival(uuid.uuid4(), now, now + timedelta(hours=1), 5, cost=1.0)
    assert admission.take_places(caller, [arrival]) == (None, None)
    assert submit().status == "pending"


# --- WebSocket and SSE -------------------------------------------------------------


def socket(secret: str) -> WebsocketCommunicator:
    headers = [(b"x-api-key", secret.encode())]
    return WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/api/v1/ws", headers)


@pytest.mark.django_db(transaction=True)
async def test_websocket_submits_count_against_the_rate(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 2  # the connect and one submit
    _, secret = await database_sync_to_async(make_key)()
    ws = socket(secret)
    assert (await ws.connect())[0]
    await ws.send_json_to({"prompt": "one", "stream": False})
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await ws.send_json_to({"prompt": "two", "stream": False})
    refused = await ws.receive_json_from(timeout=5)
    assert refused["type"] == "error" and refused["error"]["code"] == "rate_limit_exceeded"
    assert refused["error"]["retry_after"] >= 1
    await ws.disconnect()
    again = socket(secret)
    await again.connect()
    assert (await again.receive_output(timeout=5))["code"] == 4429


@pytest.mark.django_db(transaction=True)
async def test_websocket_messages_per_second_are_capped(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_WS_MESSAGES_PER_SECOND = 3
    _, secret = await database_sync_to_async(make_key)()
    ws = socket(secret)
    assert (await ws.connect())[0]
    for _ in range(4):
        await ws.send_to(text_data=json.dumps({"type": "nonsense"}))
    codes = [(await ws.receive_json_from(timeout=5))["error"]["code"] for _ in range(4)]
    assert codes == ["unknown_type"] * 3 + ["rate_limit_exceeded"]
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_open_streams_per_caller_are_capped_on_both_transports(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_STREAMS = 1
    key, secret = await database_sync_to_async(make_key)()
    first = socket(secret)
    assert (await first.connect())[0]
    second = socket(secret)
    await second.connect()
    assert (await second.receive_output(timeout=5))["code"] == 4429
    request = await database_sync_to_async(submit)(caller=Caller(key=key))
    headers = [(b"x-api-key", secret.encode())]
    stream = await SSEClient(f"/api/v1/stream/{request.pk}", headers).open()
    assert stream.status == 429
    assert stream.response_headers[b"ratelimit-policy"] == b'"streams";q=1'
    assert stream.response_headers[b"ratelimit"] == b'"streams";r=0;t=1'
    assert json.loads(await stream.read_chunk())["error"]["code"] == "too_many_streams"
    await first.disconnect()
    third = socket(secret)
    assert (await third.connect())[0]  # closing one frees its place
    await third.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_sse_connections_count_against_the_rate(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 1
    request = await database_sync_to_async(submit)()
    await database_sync_to_async(
        lambda: type(request).objects.filter(pk=request.pk).update(status="completed", result="r")
    )()
    ok = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    assert ok.status == 200
    refused = await SSEClient(f"/api/v1/stream/{request.pk}").open()
    assert refused.status == 429
    headers = {k.decode(): v.decode() for k, v in refused.response_headers.items()}
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-policy"] == '"requests";q=1;w=60'
    assert headers["x-ratelimit-remaining-requests"] == "0"
