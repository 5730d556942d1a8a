"""The auth matrix: every route of the URLconf and of the Channels routers, called
as every kind of principal, with keys required. The routes are read from the
routers, not listed by hand, so a new route cannot escape: it must be classified
below (public, staff-only page, or API) or this test fails.

Principals: no key, a malformed one, a wrong secret, a revoked key, an expired
key, another client's key, the owner's key, a staff session, a member's session
(an account without staff rights). Refused principals get 401 (4401 on the
WebSocket); another client or a member asking for the owner's request gets 404;
no refused principal ever gets a 2xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from inference import routing
from inference.models import Document, InferenceRequest, Status
from tests.keys import REFUSED, WHO, Principals
from tests.sse import SSEClient


@dataclass(frozen=True)
class Route:
    pattern: str  # the full route, as the router spells it
    name: str  # "namespace:name", or the pattern when unnamed
    methods: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{'/'.join(self.methods)} {self.pattern}"


def django_routes() -> Iterator[Route]:
    def walk(patterns: list[Any], prefix: str, namespace: str | None) -> Iterator[Route]:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                yield from walk(
                    entry.url_patterns, prefix + str(entry.pattern), entry.namespace or namespace
                )
                continue
            assert isinstance(entry, URLPattern)
            pattern = prefix + str(entry.pattern)
            name = f"{namespace}:{entry.name}" if namespace else (entry.name or pattern)
            yield Route(pattern, name if entry.name else pattern, methods_of(entry.callback))

    return walk(get_resolver().url_patterns, "", None)


def methods_of(callback: Any) -> tuple[str, ...]:
    if getattr(callback, "actions", None):  # a DRF viewset route
        return tuple(method.upper() for method in callback.actions)
    view = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if view is not None and not hasattr(view, "template_name"):
        handlers = ("get", "post", "put", "patch", "delete")
        return tuple(m.upper() for m in handlers if hasattr(view, m) and m != "options")
    return ("GET",)


ROUTES = list(django_routes())
CACHE_KEY = "c" * 64

PUBLIC = {"health", "health-live", "metrics", "schema", "docs", "admin:login", "login"}
STAFF_PAGES = {"dashboard"}
# For any signed-in account (a member chats with its own conversations).
ACCOUNT_PAGES = {"chat", "logout"}
# The effective configuration, and the whole response cache: staff only.
STAFF_API = {"inference:config", "inference:cache", "inference:cache-stats"}
# POST and PATCH bodies of the API's write routes.
BODIES = {
    "inference:infer": {"prompt": "hello"},
    "inference:infer-batch": {"requests": [{"prompt": "hello"}, {"prompt": "again"}]},
    "inference:documents-list": {"title": "t", "text": "some text"},
    "inference:session": {"title": "renamed"},
}


def kind(route: Route) -> str:
    if route.name in PUBLIC:
        return "public"
    if route.name in STAFF_PAGES or route.pattern.startswith("admin/"):
        return "staff"
    if route.name in ACCOUNT_PAGES:
        return "account"
    if route.pattern in ("api/v1/^.*$", "v1/^.*$"):
        return "no-route"
    if route.name.startswith(("inference:", "openai:")):
        return "api"
    raise AssertionError(f"unclassified route {route.pattern!r}: add it to the matrix")


def concrete(pattern: str, values: dict[str, str]) -> str:
    """A real path for a route pattern: parameters filled in, regex anchors gone."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values[m.group(1)], pattern)
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], path)
    path = path.replace("^", "").replace("$", "").replace(".*", "no-such-route")
    return "/" + path


def expected_api(route: Route, method: str, who: str) -> set[int]:
    sessions = ("staff", "member")
    if who in REFUSED or (who in sessions and route.name.startswith("openai:")):
        return {401}  # /v1 takes keys only
    if route.name in STAFF_API:
        return {200} if who == "staff" else {403}
    targets_a_request = any(
        name in route.pattern for name in ("request_id", "session_id", "completion_id", "cache_key")
    )
    if who in ("other", "member") and targets_a_request:
        return {404}
    if who == "staff" and "session_id" in route.pattern:
        return {404}  # conversations are a person's own, staff's too (the admin shows all)
    changes_documents = route.name.startswith("inference:documents") and method != "GET"
    if who in ("other", "member") and changes_documents:
        return {403}  # only keys allowed to manage documents (and staff) may change them
    return {200, 201, 202, 204}


@dataclass
class Targets:
    request: InferenceRequest
    document: Document

    @classmethod
    def create(cls, owner_secret: str) -> Targets:
        request = InferenceRequest.objects.create(
            api_key_id=owner_secret.partition(".")[0],
            prompt="p",
            session_id="owned-session",
            backend="echo",
            status=Status.COMPLETED,
            result="done",
            cache_key=CACHE_KEY,
            cache_expires_at=timezone.now() + timedelta(minutes=5),
            finished_at=timezone.now(),
        )
        document = Document.objects.create(title="d", source="s", text="t")
        return cls(request, document)

    def values(self) -> dict[str, str]:
        return {
            "request_id": str(self.request.pk),
            "completion_id": f"chatcmpl-{self.request.pk.hex}",
            "model_id": "echo",
            "session_id": self.request.session_id,
            "cache_key": CACHE_KEY,
            "pk": str(self.document.pk),
            "object_id": str(self.document.pk),
            "content_type_id": str(ContentType.objects.get_for_model(Document).pk),
            "id": "1",
            "app_label": "inference",
            "url": "no-such-page/",
        }


def call(client: Client, route: Route, method: str, who: str, principals: Principals) -> int:
    InferenceRequest.objects.all().delete()
    Document.objects.all().delete()
    targets = Targets.create(principals.own)
    body = BODIES.get(route.name) if method in ("POST", "PATCH") else None
    response = client.generic(
        method,
        concrete(route.pattern, targets.values()),
        data=json.dumps(body) if body else "",
        content_type="application/json",
        headers=principals.headers(who),
    )
    return response.status_code


@pytest.fixture
def keys_required(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = True


@pytest.mark.django_db
@pytest.mark.usefixtures("keys_required")
@pytest.mark.parametrize("route", ROUTES, ids=[r.id for r in ROUTES])
def test_every_django_route_answers_every_principal_as_expected(route: Route) -> None:
    principals = Principals.create()
    client = Client()
    unexpected = []
    for method in route.methods:
        for who in WHO:
            status = call(client, route, method, who, principals)
            category = kind(route)
            if category == "api":
                ok = status in expected_api(route, method, who)
            elif category == "staff":
                ok = status < 500 and (who == "staff" or not 200 <= status < 300)
            elif category == "account":  # signed-in accounts only (logout is POST)
                ok = status < 500 and (who in ("staff", "member") or not 200 <= status < 300)
            elif category == "no-route":
                ok = status == 404
            else:  # public: answers everyone alike (health may be 503 without a layer;
                # the admin login page sends a signed-in staff member on, 302)
                ok = status in (200, 503) or (who == "staff" and status == 302)
            if not ok:
                unexpected.append((method, who, status))
    assert unexpected == []


def test_the_matrix_covers_the_api() -> None:
    """The generator found the routes it is meant to guard (a broken walk would
    make the matrix pass vacuously)."""
    names = {r.name for r in ROUTES}
    assert {"inference:infer", "inference:status", "inference:result"} <= names
    assert {"inference:requests-detail", "inference:documents-list", "inference:session"} <= names
    assert {"inference:sessions", "inference:session-export"} <= names
    assert {"openai:models", "openai:model", "openai:completion"} <= names
    assert sum(kind(r) == "api" for r in ROUTES) >= 12


# --- Channels routes: SSE and WebSocket --------------------------------------------------


def channels_routes() -> list[str]:
    return [str(p.pattern) for p in [*routing.http_urlpatterns, *routing.websocket_urlpatterns]]


def test_the_channels_routes_are_all_in_the_matrix() -> None:
    assert channels_routes() == [
        "api/v1/stream/<str:request_id>",
        "v1/chat/completions",
        "dashboard/feed",
        "api/v1/ws",
        "",
    ]


def raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keys_required")
async def test_the_sse_stream_answers_every_principal_as_expected() -> None:
    from channels.db import database_sync_to_async

    principals = await database_sync_to_async(Principals.create)()
    targets = await database_sync_to_async(Targets.create)(principals.own)
    expected = {who: 401 for who in REFUSED} | {"other": 404, "own": 200, "staff": 200}
    expected["member"] = 404
    seen = {}
    for who in WHO:
        path = f"/api/v1/stream/{targets.request.pk}"
        stream = await SSEClient(path, raw_headers(principals.headers(who))).open()
        if stream.status == 200:
            events = await stream.events()
            assert events[-1].event == "complete"
        seen[who] = stream.status
    assert seen == expected


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keys_required")
async def test_chat_completions_take_keys_only(engine) -> None:  # type: ignore[no-untyped-def]
    """A staff session is refused too: a cookie would let any page post here."""
    from channels.db import database_sync_to_async

    principals = await database_sync_to_async(Principals.create)()
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    seen = {}
    for who in WHO:
        headers = raw_headers({**principals.headers(who), "Content-Type": "application/json"})
        client = SSEClient("/v1/chat/completions", headers, method="POST", body=body.encode())
        seen[who] = (await client.open()).status
        await client.events()
    assert seen == {who: 401 for who in [*REFUSED, "staff", "member"]} | {"other": 200, "own": 200}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keys_required")
async def test_the_dashboard_feed_is_staff_only() -> None:
    from channels.db import database_sync_to_async

    principals = await database_sync_to_async(Principals.create)()
    seen = {}
    for who in WHO:
        feed = await SSEClient("/dashboard/feed", raw_headers(principals.headers(who))).open()
        seen[who] = feed.status
        if feed.status == 200:
            await feed.disconnect()
    assert seen == {who: 403 for who in WHO if who != "staff"} | {"staff": 200}


async def open_socket(path: str, headers: dict[str, str]) -> tuple[WebsocketCommunicator, int]:
    """Connect; the close code if the server closes at once, else 0."""
    socket = WebsocketCommunicator(
        URLRouter(routing.websocket_urlpatterns), path, headers=raw_headers(headers)
    )
    connected, code = await socket.connect()
    if not connected:
        return socket, code or 1000
    if await socket.receive_nothing(timeout=0.3):
        return socket, 0
    message = await socket.receive_output()
    return socket, message["code"] if message["type"] == "websocket.close" else 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keys_required")
async def test_the_websocket_answers_every_principal_as_expected() -> None:
    from channels.db import database_sync_to_async

    principals = await database_sync_to_async(Principals.create)()
    targets = await database_sync_to_async(Targets.create)(principals.own)
    rid = str(targets.request.pk)
    seen = {}
    for who in WHO:
        socket, closed = await open_socket("/api/v1/ws", principals.headers(who))
        if closed:
            seen[who] = closed
            continue
        await socket.send_json_to({"type": "resume", "request_id": rid})
        reply = await socket.receive_json_from(timeout=5)
        seen[who] = reply["type"] if reply["type"] == "result" else reply["error"]["code"]
        await socket.disconnect()
    expected = {"other": "not_found", "own": "result", "staff": "result", "member": "not_found"}
    assert seen == {who: 4401 for who in REFUSED} | expected


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("keys_required")
async def test_an_unknown_websocket_path_is_refused_for_everyone() -> None:
    from channels.db import database_sync_to_async

    principals = await database_sync_to_async(Principals.create)()
    for who in WHO:
        _, closed = await open_socket("/somewhere/else", principals.headers(who))
        assert closed == 4404, who
