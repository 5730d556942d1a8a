"""What both servers enforce while reading a request, before any check of ours
can run: the request line and headers are bounded in bytes
(``ORCHESTRATOR_MAX_HEADER_BYTES``) and in time (``ORCHESTRATOR_HEADER_READ_SECONDS``),
the body in time (``ORCHESTRATOR_BODY_READ_SECONDS``) and in size: a declared
``Content-Length`` over ``ORCHESTRATOR_MAX_BODY_BYTES`` is a 413 before a byte of
the body is read, and a chunked body stops being read at the cap.

- ``GuardedHttpToolsProtocol``: uvicorn's HTTP protocol for ``manage.py serve``.
- ``GuardedHTTPFactory``: daphne's factory for ``manage.py runserver``.
- ``ChunkedBody``: ASGI, either server: a chunked body (no Content-Length) is read
  here, up to the cap, and handed on with its length, which Django REST
  framework needs to see it at all.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from daphne.http_protocol import HTTPFactory, WebRequest
from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inference.errors import error_body, send_asgi_error

READ_LIMITS = {
    408: ("request_timeout", "The request was not received in time."),
    413: ("request_too_large", "The request body is too large."),
    431: ("headers_too_large", "The request headers are too large."),
}


def refusal_bytes(status: int) -> bytes:
    """A whole HTTP/1.1 response refusing the request, closing the connection."""
    code, message = READ_LIMITS[status]
    body = json.dumps(error_body(message, status, code)).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


class ParsingStopped(Exception):
    """Raised from a parser callback once the request is refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the read limits above."""

    refused = False
    reading_headers = False
    header_bytes = body_bytes = 0
    deadline: Any = None  # the running read timer

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_reading_headers()

    def data_received(self, data: bytes) -> None:
        """While the headers are incomplete every byte received is a header byte
        (the parser buffers them): count them, and refuse past the cap."""
        if self.refused:
            return
        if self.reading_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        if self.reading_headers and self.header_bytes > settings.ORCHESTRATOR_MAX_HEADER_BYTES:
            self._refuse(431)

    def send_400_response(self, msg: str) -> None:
        if not self.refused:  # else our own refusal stopped the parser
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        self._stop_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > settings.ORCHESTRATOR_MAX_HEADER_BYTES:  # they came in one piece
            self._refuse(431)
            raise ParsingStopped
        length = declared_length(self.headers)
        if length is not None and length > settings.ORCHESTRATOR_MAX_BODY_BYTES:
            self._refuse(413)
            raise ParsingStopped
        super().on_headers_complete()
        self.body_bytes = 0
        chunked = any(name == b"transfer-encoding" for name, _ in self.headers)
        if length or chunked:
            self._start_timer(settings.ORCHESTRATOR_BODY_READ_SECONDS)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > settings.ORCHESTRATOR_MAX_BODY_BYTES:
            self._refuse(413)
            raise ParsingStopped
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_reading_headers()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _start_reading_headers(self) -> None:
        self.reading_headers, self.header_bytes = True, 0
        self._start_timer(settings.ORCHESTRATOR_HEADER_READ_SECONDS)

    def _start_timer(self, seconds: float) -> None:
        self._stop_timer()
        self.deadline = self.loop.call_later(seconds, self._refuse, 408)

    def _stop_timer(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _refuse(self, status: int) -> None:
        self._stop_timer()
        self.refused = True
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(refusal_bytes(status))
        self.transport.close()


class GuardedWebRequest(WebRequest):
    """daphne's request with the read limits above (Twisted itself bounds the
    headers, to ``totalHeadersSize`` bytes, and idle reads, to ``timeOut``)."""

    refused = False
    body_bytes = 0
    deadline: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = (
            settings.ORCHESTRATOR_HEADER_READ_SECONDS,
            settings.ORCHESTRATOR_BODY_READ_SECONDS,
        )
        self.deadline = self.channel.callLater(sum(limits), functools.partial(self._refuse, 408))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > settings.ORCHESTRATOR_MAX_BODY_BYTES:
            self.content = io.BytesIO()  # nothing will be written to it
            return self._refuse(413)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.body_bytes > settings.ORCHESTRATOR_MAX_BODY_BYTES:
            self._refuse(413)
        if not self.refused:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.deadline.active():
            self.deadline.cancel()
        if not self.refused:
            super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self.deadline.active():
            self.deadline.cancel()
        super().connectionLost(reason)

    def _refuse(self, status: int) -> None:
        if not self.refused:
            self.refused = True
            self.channel.transport.write(refusal_bytes(status))
            self.channel.transport.loseConnection()


class GuardedHTTPFactory(HTTPFactory):
    """daphne's HTTP factory, making ``GuardedWebRequest`` requests."""

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.timeOut = settings.ORCHESTRATOR_HEADER_READ_SECONDS  # idle while reading

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = GuardedWebRequest
        protocol._channel.totalHeadersSize = settings.ORCHESTRATOR_MAX_HEADER_BYTES
        return protocol


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class ChunkedBody:
    """ASGI: read a chunked request body here (up to the cap; 413 beyond) and
    hand it on with a ``content-length``, as if the client had sent one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = scope.get("headers", [])
        if scope["type"] != "http" or declared_length(headers) is not None:
            return await self.app(scope, receive, send)
        if not any(name == b"transfer-encoding" for name, _ in headers):
            return await self.app(scope, receive, send)
        body = await self._read(receive)
        if body is None:
            return await send_asgi_error(send, 413, *reversed(READ_LIMITS[413]))
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, self._replay(body, receive), send)

    @staticmethod
    async def _read(receive: Any) -> bytes | None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > settings.ORCHESTRATOR_MAX_BODY_BYTES:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Any) -> Any:
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed() -> dict[str, Any]:
            return pending.pop() if pending else await receive()

        return replayed
