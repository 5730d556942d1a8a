"""Server-Sent Events plumbing for Channels' ``AsyncHttpConsumer``: the wire
format, ``Last-Event-ID``, CORS (the stream bypasses Django's middleware), the
JSON error and refusal responses, and a consumer base that streams from a task.

SSE is a consumer, not a Django streaming view: at 500 streams a streaming view's
first bytes came ~1 s late here, the consumer's in 24 ms (DESIGN §12).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from inference.admission import Refusal
from inference.errors import error_body, refusal_body

# Consumers here need no channel of their own: each followed request has its
# own subscription inside ``inference.streaming.follow``.
NO_CHANNEL_LAYER = "no-channel-layer"


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def sse_event_id(seq: int, attempt: int) -> str:
    """The first attempt keeps the contract's plain seq; a retry is prefixed."""
    return str(seq) if attempt <= 1 else f"{attempt}:{seq}"


def parse_last_event_id(value: str | None) -> tuple[int, int | None]:
    """``"<seq>"`` or ``"<attempt>:<seq>"`` -> (seq, attempt); junk starts over."""
    if not value:
        return -1, None
    attempt, _, seq = value.rpartition(":")
    try:
        return int(seq), (int(attempt) if attempt else None)
    except ValueError:
        return -1, None


def cors_headers(scope: dict[str, Any], preflight: bool = False) -> list[tuple[bytes, bytes]]:
    """CORS for consumers, which bypass Django's middleware (django-cors-headers'
    settings, so both agree); ``preflight``: the answer to an OPTIONS."""
    origin = dict(scope.get("headers", [])).get(b"origin", b"").decode("latin1")
    if settings.CORS_ALLOW_ALL_ORIGINS:
        allowed = [(b"access-control-allow-origin", b"*")]
    elif origin and origin in settings.CORS_ALLOWED_ORIGINS:
        allowed = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
    else:
        return []
    if preflight:
        return [
            *allowed,
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", ", ".join(settings.CORS_ALLOW_HEADERS).encode()),
            (b"access-control-max-age", b"86400"),
        ]
    exposed = ", ".join(settings.CORS_EXPOSE_HEADERS).encode()
    return [*allowed, (b"access-control-expose-headers", exposed)]


def raw_headers(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    """Response headers as ASGI wants them."""
    return [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]


class SSEConsumer(AsyncHttpConsumer):
    """An event stream produced by ``stream()`` in a task, so that this consumer
    keeps hearing ``http.disconnect`` (which cancels the task)."""

    channel_layer_alias = NO_CHANNEL_LAYER
    streaming: asyncio.Task[None] | None = None

    async def http_request(self, message: dict[str, Any]) -> None:
        if message.get("more_body"):
            return
        if self.scope["method"] != "GET":
            body = json.dumps(error_body("Use GET.", 405, "method_not_allowed")).encode()
            headers = [(b"content-type", b"application/json"), (b"allow", b"GET")]
            return await self.send_response(405, body, headers=headers)
        self.streaming = asyncio.create_task(self.stream())

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
            await asyncio.gather(self.streaming, return_exceptions=True)
        raise StopConsumer()

    async def stream(self) -> None:
        raise NotImplementedError

    async def start_event_stream(self, headers: dict[str, str] | None = None) -> None:
        await self.send_headers(
            status=200,
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *cors_headers(self.scope),
                *raw_headers(headers),
            ],
        )

    async def json_error(
        self, status: int, message: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        """A JSON error response instead of a stream."""
        await self.send_json(status, error_body(message, status, code), headers)

    async def send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        all_headers = [
            (b"content-type", b"application/json"),
            *cors_headers(self.scope),
            *raw_headers(headers),
        ]
        await self.send_response(status, json.dumps(body).encode(), headers=all_headers)

    async def send_refusal(self, refusal: Refusal) -> None:
        await self.send_json(refusal.status, refusal_body(refusal), refusal.headers())
