"""Streaming transports: Server-Sent Events and the WebSocket protocol.

Both are adapters: they parse, authenticate and admit (``inference.admission``),
call ``inference.services``, and translate the events of
``inference.streaming.follow`` (every chunk once, in order) to their wire format.
SSE plumbing lives in ``inference.sse``.
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
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from rest_framework.exceptions import ValidationError

from inference import admission, dashboard, metrics, services
from inference.admission import Refusal, open_streams
from inference.auth import Caller, ConnectionTerm, authenticate_scope, recheck
from inference.errors import error_body, refusal_body, validation_error_body
from inference.models import InferenceRequest, Status, Transport
from inference.serializers import WebSocketSubmitSerializer
from inference.sse import (
    NO_CHANNEL_LAYER,
    SSEConsumer,
    parse_last_event_id,
    sse,
    sse_event_id,
)
from inference.streaming import Finished, Idle, Reset, StreamEvent, Token, follow

logger = logging.getLogger(__name__)


def parse_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def finished_error(request: InferenceRequest) -> dict[str, Any]:
    """The error object of a request that ended without a result."""
    code = request.error_code or str(request.status)
    return error_body(request.error or f"Request {request.status}.", 500, code)["error"]


NOT_FOUND = "No request with that id."


# --- Server-Sent Events ------------------------------------------------------------


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
            return await self.json_error(404, NOT_FOUND, "not_found")
        try:
            caller, request = await database_sync_to_async(self.authorize)(request_id)
            open_streams.open(caller)
        except Refusal as refusal:
            return await self.send_refusal(refusal)
        except DatabaseError as exc:
            return await self.send_refusal(Refusal.from_database(exc))
        self.term = ConnectionTerm(caller)
        try:
            # Resuming a dropped /v1 call keeps it from being cancelled as abandoned.
            counts = request.is_open_to_readers
            async with services.reading(request_id, counts, False, database_sync_to_async) as stay:
                await self.follow(request_id, stay)
        finally:
            open_streams.close(caller)

    def authorize(self, request_id: uuid.UUID) -> tuple[Caller, InferenceRequest]:
        """The caller, if it may stream this request (a stream token in the query
        for browsers, else a key header or a staff session), and the request."""
        token = parse_qs(self.scope.get("query_string", b"").decode("latin1")).get("token")
        caller = authenticate_scope(self.scope, token[0] if token else None, request_id)
        admission.admit_call(caller)
        request = caller.requests().only("transport", "status").filter(pk=request_id).first()
        if request is None:
            raise Refusal(404, "not_found", NOT_FOUND)
        return caller, request

    async def follow(self, request_id: uuid.UUID, stay: services.Reading) -> None:
        headers = dict(self.scope.get("headers", []))
        after, attempt = parse_last_event_id(headers.get(b"last-event-id", b"").decode())
        events = follow(request_id, after, attempt)
        try:
            first = await anext(events)
        except InferenceRequest.DoesNotExist:
            return await self.json_error(404, NOT_FOUND, "not_found")
        except DatabaseError as exc:
            return await self.send_refusal(Refusal.from_database(exc))
        await self.start_event_stream()
        start = sse("start", {"request_id": str(request_id)})
        await self.send_body(b"retry: 3000\n\n" + start, more_body=True)
        await self.relay(first, events, attempt or 1, stay)

    async def relay(
        self,
        event: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
        attempt: int,
        stay: services.Reading,
    ) -> None:
        keepalive = settings.ORCHESTRATOR_SSE_KEEPALIVE_SECONDS
        last_sent = time.monotonic()
        held = b""  # the events of tokens that came together: one write for them
        while event is not None:
            payload = b""
            if isinstance(event, Token):
                data = {"chunk": event.seq, "data": event.text}
                held += sse("token", data, sse_event_id(event.seq, attempt))
                if event.more:
                    event = await anext(events, None)
                    continue
                payload, held = held, b""
            elif isinstance(event, Reset):
                attempt = event.attempt
                payload = sse("reset", {"attempt": event.attempt})
            elif isinstance(event, Idle):
                if time.monotonic() - last_sent >= keepalive:
                    payload = b": keepalive\n\n"
            else:
                stay.answered = True
                await self.send_body(held + self.final_event(event), more_body=False)
                return
            if payload:
                await self.send_body(payload, more_body=True)
                last_sent = time.monotonic()
            try:
                await self.term.check()
            except Refusal as refusal:  # at its lifetime, end: the client resumes
                ending = b"" if refusal.status == 408 else sse("error", refusal_body(refusal))
                return await self.send_body(ending, more_body=False)
            event = await anext(events, None)

    def final_event(self, event: Finished) -> bytes:
        request = event.request
        if request.status == Status.COMPLETED:
            body = {
                "status": "done",
                "result": request.result,
                "finish_reason": request.finish_reason,
                **request.cache_report,
            }
            return sse("complete", body)
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
            return await self.close_refused(refusal)
        self.caller = caller
        self.messages = admission.MessageRate(settings.ORCHESTRATOR_WS_MESSAGES_PER_SECOND)
        await self.accept()
        self.watchdog = asyncio.create_task(self.watch(ConnectionTerm(caller)))
        metrics.CONNECTIONS_OPEN.labels("ws").inc()

    def authorize(self) -> Caller:
        caller = authenticate_scope(self.scope)
        admission.admit_call(caller)
        return caller

    async def watch(self, term: ConnectionTerm) -> None:
        """Close the socket once its term is over: 4401/4403 when its key was
        revoked, expired or deleted, 4408 at its lifetime (reconnect and resume)."""
        while True:
            await asyncio.sleep(term.seconds_to_next_check())
            try:
                await term.check()
            except Refusal as refusal:
                return await self.close_refused(refusal)

    async def disconnect(self, code: int) -> None:
        if self.caller is None:
            return  # refused at connect
        open_streams.close(self.caller)
        metrics.CONNECTIONS_OPEN.labels("ws").dec()
        # The requests keep running (they are durable); only our readers stop.
        tasks = [self.watchdog, *self.readers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close_refused(self, refusal: Refusal) -> None:
        await self.close(code=4000 + refusal.status, reason=refusal.message[:120])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            self.messages.admit()
        except Refusal as refusal:
            return await self.send_refusal(refusal)
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
        request_id = content.get("request_id")
        try:
            await database_sync_to_async(self.admit_message)()
        except Refusal as refusal:
            if refusal.status in (401, 403):  # the credential no longer holds
                return await self.close_refused(refusal)
            return await self.send_refusal(refusal, request_id)
        except DatabaseError as exc:
            return await self.send_refusal(Refusal.from_database(exc), request_id)
        try:
            await handler(content)
        except Refusal as refusal:
            await self.send_refusal(refusal, request_id)
        except DatabaseError as exc:
            await self.send_refusal(Refusal.from_database(exc), request_id)

    def admit_message(self) -> None:
        """Every message is a call: its credential must still hold (REST asks on
        every call too), and it counts against the caller's per-minute rate."""
        assert self.caller is not None
        recheck(self.caller)
        admission.count_call(self.caller)

    async def submit(self, content: dict[str, Any]) -> None:
        serializer = WebSocketSubmitSerializer(data=content)
        if not serializer.is_valid():
            error = validation_error_body(ValidationError(serializer.errors))
            return await self.send_json({"type": "error", "request_id": None, **error})
        submission = serializer.to_submission(transport=Transport.WEBSOCKET, caller=self.caller)
        request, _ = await services.asubmit_request(submission, database_sync_to_async)
        rid, session = str(request.pk), request.session_id
        ack = {"type": "ack", "request_id": rid, "session_id": session, "status": "processing"}
        await self.send_json(ack)
        self.follow(request.pk, stream=serializer.validated_data["stream"])

    async def cancel(self, content: dict[str, Any]) -> None:
        assert self.caller is not None
        self.caller.require("change")
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
            NOT_FOUND,
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
        """Relay one request's stream to this socket (replacing an older relay at
        once); at most ``ORCHESTRATOR_WS_MAX_READERS`` requests at a time."""
        previous = self.readers.pop(request_id, None)
        if previous is not None:
            previous.cancel()
        elif len(self.readers) >= settings.ORCHESTRATOR_WS_MAX_READERS:
            message = f"This socket follows {len(self.readers)} requests, the limit; wait."
            raise Refusal(429, "too_many_streams", message, retry_after=1)
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
        except DatabaseError as exc:
            await self.send_refusal(Refusal.from_database(exc, "resume later"), rid)

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
                "finish_reason": request.finish_reason,
                **request.cache_report,
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
        details: dict[str, Any] | None = None,
    ) -> None:
        extra = {"retry_after": retry_after} if retry_after is not None else {}
        body = error_body(message, status, code, param, **extra, **(details or {}))
        await self.send_json({"type": "error", "request_id": request_id, **body})

    async def send_refusal(self, refusal: Refusal, request_id: Any = None) -> None:
        await self.send_error(
            refusal.message,
            refusal.code,
            request_id=request_id,
            status=refusal.status,
            retry_after=refusal.retry_after,
            details=refusal.details,
        )


class DashboardFeedConsumer(SSEConsumer):
    """``GET /dashboard/feed``: the dashboard's numbers every few seconds (staff only)."""

    async def stream(self) -> None:
        user = self.scope.get("user")
        if not (user and user.is_active and user.is_staff):
            return await self.json_error(403, "Staff only.", "forbidden")
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
