"""API keys: issued once and stored hashed, accepted on every transport, scoped
to their own requests; the chat page, dashboard and /metrics; input caps."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from inference.models import ApiKey, InferenceRequest, Status
from inference.routing import websocket_urlpatterns
from pipeline.worker import Engine
from tests.conftest import finished
from tests.keys import bearer, make_key, operator
from tests.sse import SSEClient, text_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def keys_required(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = True


def infer(client: Client, secret: str | None, **body) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(
        "/api/v1/infer",
        json.dumps({"prompt": "hello there", **body}),
        content_type="application/json",
        headers=bearer(secret) if secret else {},
    )
    assert response.status_code == 202, response.content
    return response.json()


def test_create_api_key_prints_the_secret_once_and_stores_only_its_hash() -> None:
    out, err = StringIO(), StringIO()
    call_command("create_api_key", "ci robot", "--max-in-flight", "3", stdout=out, stderr=err)
    secret = out.getvalue().strip()
    key = ApiKey.objects.get()
    prefix, _, rest = secret.partition(".")
    assert key.prefix == prefix and len(rest) == 32 and "Store it now" in err.getvalue()
    assert secret not in key.hashed_key and rest not in key.id
    assert key.hashed_key.startswith("sha512$$") and key.max_in_flight == 3
    assert Client().get("/api/v1/requests/", headers=bearer(secret)).status_code == 200


def test_revoke_api_key_stops_the_key_at_once() -> None:
    key, secret = make_key()
    call_command("revoke_api_key", key.prefix, stdout=StringIO())
    response = Client().get("/api/v1/requests/", headers=bearer(secret))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_revoked"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),
        ({"Authorization": "Bearer no-dot-here"}, "invalid_api_key"),
        ({"X-API-Key": "abcdefgh.wrong-secret"}, "invalid_api_key"),
    ],
)
def test_a_missing_or_bad_key_is_a_401_with_a_bearer_challenge(headers, code) -> None:  # type: ignore[no-untyped-def]
    response = Client().get("/api/v1/requests/", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["error"] == {
        "message": response.json()["error"]["message"],
        "type": "authentication_error",
        "code": code,
        "param": None,
    }


def test_an_expired_key_is_refused_and_a_used_key_records_when() -> None:
    _, old = make_key(expiry_date=timezone.now() - timedelta(seconds=1))
    response = Client().get("/api/v1/requests/", headers={"X-API-Key": old})
    assert response.json()["error"]["code"] == "api_key_expired"
    key, secret = make_key(expiry_date=timezone.now() + timedelta(days=1))
    assert key.last_used_at is None
    assert Client().get("/api/v1/requests/", headers={"X-API-Key": secret}).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_a_key_sees_only_its_own_requests_and_staff_see_all(client: Client) -> None:
    _, alice = make_key("alice")
    _, bob = make_key("bob")
    mine = infer(client, alice)["request_id"]
    theirs = infer(client, bob)["request_id"]
    listed = client.get("/api/v1/requests/", headers=bearer(alice)).json()["results"]
    assert [row["request_id"] for row in listed] == [mine]
    for path in (f"/api/v1/status/{theirs}", f"/api/v1/result/{theirs}"):
        assert client.get(path, headers=bearer(alice)).status_code == 404
    cancel = client.post(f"/api/v1/requests/{theirs}/cancel/", headers=bearer(alice))
    assert cancel.status_code == 404
    assert InferenceRequest.objects.get(pk=theirs).status == Status.PENDING
    client.force_login(operator())
    assert len(client.get("/api/v1/requests/").json()["results"]) == 2


def test_idempotency_keys_and_session_ids_are_per_key(client: Client) -> None:
    _, alice = make_key("alice")
    _, bob = make_key("bob")
    headers = {"Idempotency-Key": "order-1"}
    first = client.post(
        "/api/v1/infer",
        {"prompt": "a", "session_id": "chat"},
        content_type="application/json",
        headers={**bearer(alice), **headers},
    ).json()
    second = client.post(
        "/api/v1/infer",
        {"prompt": "b", "session_id": "chat"},
        content_type="application/json",
        headers={**bearer(bob), **headers},
    )
    assert second.status_code == 202 and second.json()["request_id"] != first["request_id"]
    turns = client.get("/api/v1/sessions/chat", headers=bearer(alice)).json()["turns"]
    assert [turn["prompt"] for turn in turns] == ["a"]
    assert client.delete("/api/v1/sessions/chat", headers=bearer(alice)).status_code == 204
    assert InferenceRequest.objects.filter(session_id="chat").count() == 1  # bob's stays


@pytest.mark.django_db(transaction=True)
async def test_a_session_history_holds_only_the_same_keys_turns(engine: Engine) -> None:
    from tests.conftest import asubmit

    alice, _ = await database_sync_to_async(make_key)("alice")
    bob, _ = await database_sync_to_async(make_key)("bob")
    from inference.auth import Caller

    secret_turn = await asubmit("bob's secret", session_id="s", caller=Caller(key=bob))
    await finished(secret_turn.pk)
    mine = await asubmit("hello", session_id="s", caller=Caller(key=alice))
    done = await finished(mine.pk)
    assert [m["content"] for m in done.messages if m["role"] != "system"] == ["hello"]


def test_documents_are_readable_by_any_key_but_changed_only_by_managers(client: Client) -> None:
    _, reader = make_key("reader")
    _, manager = make_key("manager", can_manage_documents=True)
    body = {"title": "Doc", "text": "Some text."}
    refused = client.post("/api/v1/documents/", body, "application/json", headers=bearer(reader))
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    made = client.post("/api/v1/documents/", body, "application/json", headers=bearer(manager))
    assert made.status_code == 201
    assert client.get("/api/v1/documents/", headers=bearer(reader)).json()["results"]


def test_a_members_session_sees_its_own_requests_only(client: Client) -> None:
    """A signed-in account without staff rights is a member: like a key, it sees
    what it submitted and nothing else (another's request is a 404)."""
    _, secret = make_key()
    theirs = Client().post(
        "/api/v1/infer", {"prompt": "a key's"}, "application/json", headers=bearer(secret)
    )
    alice, bob = Client(), Client()
    alice.force_login(User.objects.create(username="alice"))
    bob.force_login(User.objects.create(username="bob"))
    mine = alice.post("/api/v1/infer", {"prompt": "alice's"}, "application/json")
    assert mine.status_code == 202
    request_id = mine.json()["request_id"]
    listed = alice.get("/api/v1/requests/").json()["results"]
    assert [r["request_id"] for r in listed] == [request_id]
    assert bob.get("/api/v1/requests/").json()["results"] == []
    assert bob.get(f"/api/v1/status/{request_id}").status_code == 404
    assert alice.get(f"/api/v1/status/{theirs.json()['request_id']}").status_code == 404
    assert Client().get("/api/v1/requests/").status_code == 401  # anonymous: still refused
    row = InferenceRequest.objects.get(pk=request_id)
    assert (row.owner.username, row.api_key_id) == ("alice", None)


def test_the_chat_page_is_for_signed_in_accounts_once_keys_are_required(
    client: Client,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert "Sign in" in client.get(response["Location"]).content.decode()
    client.force_login(User.objects.create(username="member"))
    page = client.get("/")
    assert page.status_code == 200
    assert 'href="/dashboard/"' not in page.content.decode()  # staff's pages are not offered
    staff = Client()
    staff.force_login(User.objects.create(username="ops", is_staff=True))
    assert 'href="/dashboard/"' in staff.get("/").content.decode()
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    assert Client().get("/").status_code == 200  # development: open


def test_a_member_signs_in_on_the_login_page_and_out(client: Client) -> None:
    User.objects.create_user(username="carol", password="correct horse battery")
    wrong = client.post("/accounts/login/", {"username": "carol", "password": "nope"})
    assert "did not match" in wrong.content.decode()
    signed_in = client.post(
        "/accounts/login/", {"username": "carol", "password": "correct horse battery"}
    )
    assert signed_in.status_code == 302 and client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_metrics_take_their_own_token_when_one_is_set(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/metrics").status_code == 200  # default: open (network-restricted)
    settings.ORCHESTRATOR_METRICS_TOKEN = "scrape-me"
    _, secret = make_key()
    assert client.get("/metrics", headers=bearer(secret)).status_code == 401
    assert client.get("/metrics", headers=bearer("scrape-me")).status_code == 200


def test_health_ignores_credentials_entirely(client: Client) -> None:
    response = client.get("/health/live", headers={"Authorization": "Bearer junk"})
    assert response.status_code == 200


def test_development_mode_still_scopes_keyed_requests(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    _, secret = make_key()
    keyed = infer(client, secret)["request_id"]
    anonymous = infer(client, None)["request_id"]
    listed = [row["request_id"] for row in client.get("/api/v1/requests/").json()["results"]]
    assert listed == [anonymous] and keyed not in listed


# --- Stream tokens (SSE without headers) ---------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_stream_token_opens_that_requests_stream_without_a_key(engine: Engine) -> None:
    _, secret = await database_sync_to_async(make_key)()
    body = await database_sync_to_async(infer)(Client(), secret)
    request_id, token = body["request_id"], body["stream_token"]
    assert secret not in token
    stream = await SSEClient(f"/api/v1/stream/{request_id}?token={token}").open()
    assert stream.status == 200
    assert text_of(await stream.events()) == "hello there"
    no_token = await SSEClient(f"/api/v1/stream/{request_id}").open()
    assert no_token.status == 401


@pytest.mark.django_db(transaction=True)
async def test_a_stream_token_is_bound_to_its_request_and_expires(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    key, secret = await database_sync_to_async(make_key)()
    first = await database_sync_to_async(infer)(Client(), secret)
    second = await database_sync_to_async(infer)(Client(), secret)
    borrowed = await SSEClient(
        f"/api/v1/stream/{second['request_id']}?token={first['stream_token']}"
    ).open()
    assert borrowed.status == 401
    settings.ORCHESTRATOR_STREAM_TOKEN_SECONDS = -1
    stale = await SSEClient(
        f"/api/v1/stream/{first['request_id']}?token={first['stream_token']}"
    ).open()
    assert stale.status == 401
    settings.ORCHESTRATOR_STREAM_TOKEN_SECONDS = 900
    key.revoked = True
    await database_sync_to_async(key.save)()
    revoked = await SSEClient(
        f"/api/v1/stream/{first['request_id']}?token={first['stream_token']}"
    ).open()
    assert revoked.status == 401


@pytest.mark.django_db(transaction=True)
async def test_a_staff_session_streams_and_chats(engine: Engine) -> None:
    """The chat page's socket and the admin's stream authenticate by cookie."""
    client = Client()
    await database_sync_to_async(client.force_login)(await database_sync_to_async(operator)())
    cookie = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]
    socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/api/v1/ws", cookie)
    assert (await socket.connect())[0]
    await socket.send_json_to({"prompt": "staff says hi", "stream": False})
    ack = await socket.receive_json_from(timeout=5)
    assert (await socket.receive_json_from(timeout=10))["result"] == "staff says hi"
    await socket.disconnect()
    stream = await SSEClient(f"/api/v1/stream/{ack['request_id']}", cookie).open()
    assert stream.status == 200


@pytest.mark.django_db(transaction=True)
async def test_a_refused_socket_is_closed_with_4401_or_4403_before_any_message() -> None:
    app = URLRouter(websocket_urlpatterns)
    socket = WebsocketCommunicator(app, "/api/v1/ws", [(b"x-api-key", b"nope.nope")])
    await socket.connect()
    closed = await socket.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401, "reason": "Invalid API key."}
    client = Client()
    await database_sync_to_async(client.force_login)(
        await database_sync_to_async(User.objects.create)(username="visitor")
    )
    await database_sync_to_async(User.objects.filter(username="visitor").update)(is_active=False)
    cookie = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]
    socket = WebsocketCommunicator(app, "/api/v1/ws", cookie)
    await socket.connect()  # a disabled account is nobody
    assert (await socket.receive_output(timeout=5))["code"] == 4401
    assert await database_sync_to_async(InferenceRequest.objects.count)() == 0


# --- Input caps -------------------------------------------------------------------


def test_metadata_nested_too_deep_is_a_400(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    nested: dict = {"v": 1}
    for _ in range(settings.ORCHESTRATOR_MAX_METADATA_DEPTH):
        nested = {"n": nested}
    response = client.post(
        "/api/v1/infer", {"prompt": "x", "metadata": nested}, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "max_depth"


def test_a_pathologically_nested_body_is_a_400_not_a_500(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    body = '{"prompt": "x", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/api/v1/infer", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_demoted_staff_connection_is_not_vouched_for_by_the_same_account_as_member() -> None:
    from inference import auth

    auth.reset()
    user = operator("demoted")
    as_staff = auth.caller_for(None, user, None)
    User.objects.filter(pk=user.pk).update(is_staff=False)
    user.refresh_from_db()
    auth.recheck(auth.caller_for(None, user, None))  # its member connection passes
    with pytest.raises(auth.Refusal):
        auth.recheck(as_staff, max_age=60)  # the staff one does not, even within max_age
