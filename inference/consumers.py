"""Streaming transports: Server-Sent Events and the WebSocket protocol.

Both are thin: they parse, call ``inference.services``, and translate the events
of ``inference.streaming.follow`` (every chunk once, in order) to their wire
format. Neither uses the consumer's own channel: each followed request has its
own subscription inside ``follow``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from rest_framework.exceptions import ValidationError

from inference import dashboard, limits, services
from inference.auth import AuthFailed, Caller, authenticate_scope, verify_stream_token
from inference.errors import error_body, validation_error_body
from inference.models import InferenceRequest, Status
from inference.serializers import WebSocketSubmitSerializer
from inference.streaming import Finished, Idle, Reset, StreamEvent, Token, follow
from pipeline import metrics

logger = logging.getLogger(__name__)

# Consumers here need no channel of their own (see the module docstring).
NO_CHANNEL_LAYER = "no-channel-layer"


def parse_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def finished_error(request: InferenceRequest) -> dict[str, Any]:
    """The error object of a request that ended without a result."""
    code = request.error_code or str(request.status)
    return error_body(request.error or f"Request {request.status}.", 500, code)["error"]


# --- Server-Sent Events ------------------------------------------------------------


def parse_last_event_id(value: str | None) -> tuple[int, int | None]:
    """``"<seq>"`` or ``"<attempt>:<seq>"`` -> (seq, attempt); junk starts over."""
    if not value:
        return -1, None
    attempt, _, seq = value.rpartition(":")
    try:
        return int(seq), (int(attempt) if attempt else None)
    except ValueError:
        return -1, None


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def sse_event_id(seq: int, attempt: int) -> str:
    """The first attempt keeps the contract's plain seq; a retry is prefixed."""
    return str(seq) if attempt <= 1 else f"{attempt}:{seq}"


def cors_headers(scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """CORS for the stream, which bypasses Django's middleware."""
    origin = dict(scope.get("headers", [])).get(b"origin", b"").decode("latin1")
    if settings.CORS_ALLOW_ALL_ORIGINS:
        return [(b"access-control-allow-origin", b"*")]
    if origin and origin in settings.CORS_ALLOWED_ORIGINS:
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
    return []


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

    async def start_event_stream(self) -> None:
        await self.send_headers(
            status=200,
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *cors_headers(self.scope),
            ],
        )

    async def json_error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        code = code or {403: "forbidden", 404: "not_found"}.get(status, "service_unavailable")
        body = json.dumps(error_body(message, status, code)).encode()
        extra = dict(headers or {})
        if status == 503:
            extra["Retry-After"] = "5"
        if status == 401:
            extra["WWW-Authenticate"] = 'Bearer realm="api"'
        raw = [(name.lower().encode(), value.encode()) for name, value in extra.items()]
        all_headers = [(b"content-type", b"application/json"), *cors_headers(self.scope), *raw]
        await self.send_response(status, body, headers=all_headers)


class Refusal(Exception):
    """A stream that may not open: the HTTP status (or WebSocket close code)."""

    def __init__(
        self, status: int, message: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}

    @classmethod
    def from_auth(cls, failed: AuthFailed) -> Refusal:
        return cls(failed.status, failed.message, failed.code)


def admit_caller(caller: Caller) -> None:
    """Refuse a caller without access, or over its per-minute rate."""
    if caller.refused is not None:
        raise Refusal.from_auth(caller.refused)
    quota = limits.check_rate(caller)
    if quota is not None and not quota.allowed:
        headers = {"Retry-After": str(quota.reset), **limits.quota_headers([quota])}
        message = f"Rate limit exceeded; retry in {quota.reset} s."
        raise Refusal(429, message, "rate_limit_exceeded", headers)


class OpenStreams:
    """Streams (SSE and WebSockets) each caller holds open in this process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def open(self, caller: Caller) -> None:
        limit = settings.ORCHESTRATOR_MAX_STREAMS
        held = self.counts.get(caller.identity, 0)
        if limit and not caller.staff and held >= limit:
            message = f"Too many open streams ({held}, the limit); close one first."
            quota = limits.Quota("streams", limit, 0, 1, allowed=False)
            headers = {"Retry-After": "1", **limits.quota_headers([quota])}
            raise Refusal(429, message, "too_many_streams", headers)
        self.counts[caller.identity] = held + 1

    def close(self, caller: Caller) -> None:
        held = self.counts.get(caller.identity, 0) - 1
        if held > 0:
            self.counts[caller.identity] = held
        else:
            self.counts.pop(caller.identity, None)


open_streams = OpenStreams()


class StreamConsumer(SSEConsumer):
    """``GET /api/v1/stream/<id>``: the request's tokens as Server-Sent Events."""

    async def stream(self) -> None:
        metrics.CONNECTIONS_OPEN.labels("sse").inc()
        try:
            await self._stream()
        finally:
            metrics.CONNECTIONS_OPEN.labels("sse").dec()

    async def _stream(self) -> None:
        request_id = parse_uuid(self.scope["url_route"]["kwargs"]["request_id"])
        if request_id is None:
            return await self.json_error(404, "No request with that id.")
        try:
            caller = await database_sync_to_async(self.authorize)(request_id)
            open_streams.open(caller)
        except Refusal as refusal:
            return await self.json_error(
                refusal.status, refusal.message, refusal.code, refusal.headers
            )
        except DatabaseError:
            return await self.json_error(503, "The database is unavailable; retry later.")
        try:
            await self.follow(request_id)
        finally:
            open_streams.close(caller)

    def authorize(self, request_id: uuid.UUID) -> Caller:
        """The caller, if it may stream this request: a stream token in the query
        (browsers), else a key header or a staff session."""
        token = parse_qs(self.scope.get("query_string", b"").decode("latin1")).get("token")
        try:
            if token:
                caller = verify_stream_token(token[0], request_id)
            else:
                caller = authenticate_scope(self.scope)
        except AuthFailed as failed:
            raise Refusal.from_auth(failed) from None
        admit_caller(caller)
        if not caller.requests().filter(pk=request_id).exists():
            raise Refusal(404, "No request with that id.", "not_found")
        return caller

    async def follow(self, request_id: uuid.UUID) -> None:
        headers = dict(self.scope.get("headers", []))
        after, attempt = parse_last_event_id(headers.get(b"last-event-id", b"").decode())
        events = follow(request_id, after, attempt)
        try:
            first = await anext(events)
        except InferenceRequest.DoesNotExist:
            return await self.json_error(404, "No request with that id.")
        except DatabaseError:
            return await self.json_error(503, "The database is unavailable; retry later.")
        await self.start_event_stream()
        start = sse("start", {"request_id": str(request_id)})
        await self.send_body(b"retry: 3000\n\n" + start, more_body=True)
        await self.relay(first, events, attempt or 1)

    async def relay(
        self, event: StreamEvent | None, events: AsyncIterator[StreamEvent], attempt: int
    ) -> None:
        keepalive = settings.ORCHESTRATOR_SSE_KEEPALIVE_SECONDS
        last_sent = time.monotonic()
        while event is not None:
            payload = b""
            if isinstance(event, Token):
                data = {"chunk": event.seq, "data": event.text}
                payload = sse("token", data, sse_event_id(event.seq, attempt))
            elif isinstance(event, Reset):
                attempt = event.attempt
                payload = sse("reset", {"attempt": event.attempt})
            elif isinstance(event, Idle):
                if time.monotonic() - last_sent >= keepalive:
                    payload = b": keepalive\n\n"
            else:
                await self.send_body(self.final_event(event), more_body=False)
                return
            if payload:
                await self.send_body(payload, more_body=True)
                last_sent = time.monotonic()
            event = await anext(events, None)

    def final_event(self, event: Finished) -> bytes:
        request = event.request
        if request.status == Status.COMPLETED:
            return sse("complete", {"status": "done", "result": request.result})
        return sse("error", {"error": finished_error(request), "status": request.status})


# --- WebSocket -----------------------------------------------------------------------


class InferenceSocketConsumer(AsyncJsonWebsocketConsumer):
    """``/api/v1/ws``: submit, stream, cancel and resume; many requests per socket."""

    channel_layer_alias = NO_CHANNEL_LAYER

    caller: Caller | None = None

    async def connect(self) -> None:
        """Authenticate before accepting: a refused socket is accepted only to be
        closed with 4000 + the HTTP status (4401, 4403, 4429) and the reason."""
        self.readers: dict[uuid.UUID, asyncio.Task[None]] = {}
        try:
            caller = await database_sync_to_async(self.authorize)()
            open_streams.open(caller)
        except Refusal as refusal:
            await self.accept()
            return await self.close(code=4000 + refusal.status, reason=refusal.message[:120])
        self.caller = caller
        self.messages = TokenBucket(settings.ORCHESTRATOR_WS_MESSAGES_PER_SECOND)
        await self.accept()
        metrics.CONNECTIONS_OPEN.labels("ws").inc()

    def authorize(self) -> Caller:
        try:
            caller = authenticate_scope(self.scope)
        except AuthFailed as failed:
            raise Refusal.from_auth(failed) from None
        admit_caller(caller)
        return caller

    async def disconnect(self, code: int) -> None:
        if self.caller is None:
            return  # refused at connect
        open_streams.close(self.caller)
        metrics.CONNECTIONS_OPEN.labels("ws").dec()
        # The requests keep running (they are durable); only our readers stop.
        for task in self.readers.values():
            task.cancel()
        await asyncio.gather(*self.readers.values(), return_exceptions=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.messages.take():
            limit = settings.ORCHESTRATOR_WS_MESSAGES_PER_SECOND
            message = f"More than {limit} messages per second; this one was dropped."
            return await self.send_error(message, "rate_limit_exceeded", status=429, retry_after=1)
        if text_data is None:
            return await self.send_error("Send JSON in text frames.", "invalid_frame")
        if len(text_data.encode()) > settings.ORCHESTRATOR_MAX_BODY_BYTES:
            return await self.close(code=1009)  # message too big
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            return await self.send_error("The message is not valid JSON.", "invalid_json")
        if not isinstance(content, dict):
            return await self.send_error("The message must be a JSON object.", "invalid_message")
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type", "infer")
        handlers = {"infer": self.submit, "cancel": self.cancel, "resume": self.resume}
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await self.send_error(f"Unknown message type {kind!r}.", "unknown_type", param="type")
            return
        try:
            await handler(content)
        except DatabaseError:
            await self.send_error(
                "The database is unavailable; retry later.",
                "service_unavailable",
                request_id=content.get("request_id"),
                status=503,
            )

    async def submit(self, content: dict[str, Any]) -> None:
        serializer = WebSocketSubmitSerializer(data=content)
        try:
            serializer.is_valid(raise_exception=True)
        except ValidationError as exc:
            await self.send_json(
                {"type": "error", "request_id": None, **validation_error_body(exc)}
            )
            return
        assert self.caller is not None
        submission = serializer.to_submission(
            transport="ws",
            idempotency_key=serializer.validated_data.get("idempotency_key") or None,
            caller=self.caller,
        )
        try:
            request, _ = await self.admit_and_submit(submission)
        except Refusal as refusal:
            retry_after = int(refusal.headers.get("Retry-After", 1))
            await self.send_error(
                refusal.message, refusal.code, status=refusal.status, retry_after=retry_after
            )
            return
        except services.AdmissionRefused as refused:
            status = 503 if isinstance(refused, services.QueueFull) else 429
            await self.send_error(
                refused.message, refused.code, status=status, retry_after=refused.retry_after
            )
            return
        await self.send_json(
            {
                "type": "ack",
                "request_id": str(request.pk),
                "session_id": request.session_id,
                "status": "processing",
            }
        )
        self.follow(request.pk, stream=serializer.validated_data["stream"])

    @staticmethod
    async def admit_and_submit(submission: services.Submission) -> tuple[InferenceRequest, bool]:
        """Count the submit against the caller's rate, then store it."""
        await database_sync_to_async(admit_caller)(submission.caller)
        return await services.asubmit_request(submission, database_sync_to_async)

    async def cancel(self, content: dict[str, Any]) -> None:
        request_id = await self.known_request(content)
        if request_id is None:
            return
        await database_sync_to_async(services.cancel_request)(request_id)
        if request_id not in self.readers:
            self.follow(request_id, stream=False)  # report the final state

    async def resume(self, content: dict[str, Any]) -> None:
        request_id = await self.known_request(content)
        if request_id is None:
            return
        last_chunk = content.get("last_chunk", -1)
        attempt = content.get("attempt")
        if not isinstance(last_chunk, int) or isinstance(last_chunk, bool):
            await self.send_error(
                "last_chunk must be an integer.",
                "invalid",
                param="last_chunk",
                request_id=str(request_id),
            )
            return
        attempt = attempt if isinstance(attempt, int) else None
        self.follow(request_id, after=last_chunk, attempt=attempt)

    async def known_request(self, content: dict[str, Any]) -> uuid.UUID | None:
        """The message's request id if this caller may see it (else a 404 error)."""
        request_id = parse_uuid(content.get("request_id"))
        if request_id and await database_sync_to_async(self.visible)(request_id):
            return request_id
        await self.send_error(
            "No request with that id.",
            "not_found",
            param="request_id",
            request_id=content.get("request_id"),
            status=404,
        )
        return None

    def visible(self, request_id: uuid.UUID) -> bool:
        assert self.caller is not None
        return self.caller.requests().filter(pk=request_id).exists()

    def follow(
        self,
        request_id: uuid.UUID,
        *,
        stream: bool = True,
        after: int = -1,
        attempt: int | None = None,
    ) -> None:
        """Relay one request's stream to this socket (replacing an older relay)."""
        previous = self.readers.pop(request_id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self.relay(request_id, stream, after, attempt))
        self.readers[request_id] = task
        task.add_done_callback(functools.partial(self.forget_reader, request_id))

    def forget_reader(self, request_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        if self.readers.get(request_id) is task:
            del self.readers[request_id]

    async def relay(
        self, request_id: uuid.UUID, stream: bool, after: int, attempt: int | None
    ) -> None:
        rid = str(request_id)
        try:
            async for event in follow(request_id, after, attempt):
                if isinstance(event, Token) and stream:
                    message = {"type": "token", "request_id": rid, "chunk": event.seq}
                    await self.send_json({**message, "data": event.text})
                elif isinstance(event, Reset):
                    message = {"type": "reset", "request_id": rid, "attempt": event.attempt}
                    await self.send_json(message)
                elif isinstance(event, Finished):
                    await self.send_json(self.final_message(event.request))
        except DatabaseError:
            await self.send_error(
                "The database is unavailable; resume later.",
                "service_unavailable",
                request_id=rid,
                status=503,
            )

    @staticmethod
    def final_message(request: InferenceRequest) -> dict[str, Any]:
        rid = str(request.pk)
        if request.status in (Status.COMPLETED, Status.CANCELLED):
            return {
                "type": "result",
                "request_id": rid,
                "result": request.result,
                "status": request.status,
                "usage": request.usage,
            }
        return {
            "type": "error",
            "request_id": rid,
            "status": request.status,
            "error": finished_error(request),
        }

    async def send_error(
        self,
        message: str,
        code: str,
        *,
        param: str | None = None,
        request_id: Any = None,
        status: int = 400,
        retry_after: int | None = None,
    ) -> None:
        extra = {"retry_after": retry_after} if retry_after is not None else {}
        body = error_body(message, status, code, param, **extra)
        await self.send_json({"type": "error", "request_id": request_id, **body})


class TokenBucket:
    """``rate`` messages per second, in bursts of up to ``rate`` (0: unlimited)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.updated = time.monotonic()

    def take(self) -> bool:
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class DashboardFeedConsumer(SSEConsumer):
    """``GET /dashboard/feed``: the dashboard's numbers every few seconds (staff only)."""

    async def stream(self) -> None:
        user = self.scope.get("user")
        if not (user and user.is_active and user.is_staff):
            return await self.json_error(403, "Staff only.")
        await self.start_event_stream()
        take = database_sync_to_async(dashboard.snapshot)
        while True:
            await self.send_body(sse("stats", await take()), more_body=True)
            await asyncio.sleep(settings.ORCHESTRATOR_DASHBOARD_INTERVAL_SECONDS)


class NotFoundSocketConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: refuse the handshake."""

    channel_layer_alias = NO_CHANNEL_LAYER

    async def connect(self) -> None:
        await self.close(code=4404)
