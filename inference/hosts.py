"""Which sites may reach the routes Channels serves ahead of Django: the Host of
an SSE stream must be one of ``ALLOWED_HOSTS`` (Django checks its own routes),
and a WebSocket's Origin must be this site itself, scheme, host and port (or an
origin the settings trust), where Channels' AllowedHostsOriginValidator compared
the host alone.
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from inference.errors import send_asgi_error

ASGIApp = Any


def request_host(scope: dict[str, Any]) -> str:
    """The Host header (lower-case), else the server's name, as Django reads it."""
    for name, value in scope.get("headers", []):
        if name == b"host":
            return value.decode("latin1").lower()
    server = scope.get("server") or ("", None)
    return str(server[0])


def allowed_host(host: str) -> bool:
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def allowed_origin(scope: dict[str, Any]) -> bool:
    origin = dict(scope.get("headers", [])).get(b"origin", b"").decode("latin1").lower()
    host = request_host(scope)
    if not origin or not allowed_host(host):
        return False
    trusted = {*settings.CSRF_TRUSTED_ORIGINS, *settings.CORS_ALLOWED_ORIGINS}
    if origin in {entry.lower() for entry in trusted}:
        return True
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return origin == f"{scheme}://{host}"


class AllowedHosts:
    """HTTP: a Host outside ``ALLOWED_HOSTS`` gets a 400, as from Django."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if allowed_host(request_host(scope)):
            return await self.app(scope, receive, send)
        await send_asgi_error(send, 400, "Invalid Host header.", "disallowed_host")


class SameOrigin:
    """WebSocket: the handshake is refused unless ``allowed_origin``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if allowed_origin(scope):
            return await self.app(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
