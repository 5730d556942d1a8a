"""The OpenAI-compatible ``/v1`` API: every call is a durable request.

``POST /v1/chat/completions`` is a Channels consumer (like the native SSE
stream, and for the same reason: first bytes on time under load); it streams
the request's chunks as ``chat.completion.chunk`` events or waits for the end
and answers one ``chat.completion``. The ``GET`` routes are DRF views. The wire
format lives in ``inference.openai_wire``.

A client that drops its connection leaves the request running for
``ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS``: a reader that resumes in time
(``GET /api/v1/stream/<id>`` or ``GET /v1/chat/completions/<id>``) keeps it,
otherwise it is cancelled and its upstream call closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from inference import admission, flags, metrics, services
from inference.admission import Refusal, open_streams
from inference.auth import Caller, ConnectionTerm, authenticate_scope, scope_headers
from inference.budgets import budget_headers
from inference.drf import OpenAIKeyAuthentication, caller_of
from inference.errors import error_body, validation_error_body
from inference.models import InferenceRequest, Status, Transport, tier_of
from inference.openai_wire import (
    ChatCompletionResponseSerializer,
    ChatCompletionSerializer,
    ChunkWriter,
    ModelListSerializer,
    ModelSerializer,
    completion_body,
    error_line,
    failure_of,
    model_ids,
    model_object,
    resolve_model,
)
from inference.serializers import ErrorSerializer, cache_headers, idempotency_key_of
from inference.sse import SSEConsumer, cors_headers
from inference.streaming import Finished, Idle, Reset, Token, follow, wait_until_finished
from inference.views import APIView, get_request_or_404, wait_seconds

logger = logging.getLogger(__name__)

FLAG = "openai_api"
TURNED_OFF = "The OpenAI-compatible API is turned off."
# A retried failure would fail the same way: the worker already retried it.
NO_RETRY = {"x-should-retry": "false"}


def request_headers(request: InferenceRequest, ignored: list[str]) -> dict[str, str]:
    headers = {
        "X-Orchestrator-Request-Id": str(request.pk),
        "X-Priority-Applied": tier_of(request.priority),
        **budget_headers(request),
    }
    if ignored:
        headers["X-Orchestrator-Ignored-Params"] = ", ".join(ignored)
    return headers


class ChatCompletionsConsumer(SSEConsumer):
    """``POST /v1/chat/completions``, streamed (``stream: true``) or not."""

    request: InferenceRequest | None = None
    started = False  # the event stream's headers are sent

    async def http_request(self, message: dict[str, Any]) -> None:
        self.body.append(message.get("body", b""))  # (AsyncHttpConsumer's list)
        if message.get("more_body"):
            return
        method = self.scope["method"]
        if method == "OPTIONS":
            await self.send_response(204, b"", headers=cors_headers(self.scope, preflight=True))
        elif method != "POST":
            headers = {"Allow": "POST"}
            await self.json_error(405, "Use POST.", "method_not_allowed", headers)
        else:
            # A disconnect cancels this task: the request's reading ends unanswered.
            self.streaming = asyncio.create_task(self.respond())

    async def respond(self) -> None:
        try:
            await self._respond()
        except Refusal as refusal:
            await self.send_refusal(refusal)
        except ValidationError as exc:
            await self.send_json(400, validation_error_body(exc))
        except DatabaseError as exc:
            await self.fail(Refusal.from_database(exc))
        except Exception:  # a bug: answer (a client must not hang), and log it
            logger.exception("chat completion failed")
            await self.fail(Refusal(500, "internal_error", "Internal server error."))

    async def fail(self, refusal: Refusal) -> None:
        """An error as a response, or as the stream's last event once it began."""
        if self.started:
            line = error_line(refusal.status, refusal.message, refusal.code)
            return await self.send_body(line, more_body=False)
        await self.send_refusal(refusal)

    async def _respond(self) -> None:
        caller = await database_sync_to_async(self.authorize)()
        if not await flags.aenabled(FLAG, caller.key_prefix):
            raise Refusal(404, "not_found", TURNED_OFF)
        serializer = ChatCompletionSerializer(data=self.parse_body())
        serializer.is_valid(raise_exception=True)
        headers = scope_headers(self.scope)
        submission = serializer.to_submission(
            headers,
            transport=Transport.OPENAI,
            caller=caller,
            idempotency_key=idempotency_key_of(headers.get("idempotency-key")),
        )
        stream = bool(serializer.validated_data.get("stream"))
        if stream:
            open_streams.open(caller)
        try:
            request, created = await services.asubmit_request(submission, database_sync_to_async)
            self.request = request
            extra = request_headers(request, serializer.ignored_params())
            async with services.reading(
                request.pk, not request.is_terminal, created, database_sync_to_async
            ) as stay:
                if stream:
                    await self.stream_chunks(caller, extra, serializer.include_usage, stay)
                else:
                    await self.wait(extra, stay)
        finally:
            if stream:
                open_streams.close(caller)

    def authorize(self) -> Caller:
        """Keys only: a session cookie would let any web page post here (no CSRF)."""
        caller = authenticate_scope(self.scope, lenient=True)
        admission.admit_call(caller)
        return caller

    def parse_body(self) -> Any:
        try:
            return json.loads(b"".join(self.body))
        except (ValueError, RecursionError):
            raise ValidationError({"body": ["The body is not valid JSON."]}) from None

    async def wait(self, headers: dict[str, str], stay: services.Reading) -> None:
        """Non-streamed: the ``chat.completion`` once the request has finished."""
        assert self.request is not None
        deadline = self.request.deadline_at or timezone.now()
        seconds = (deadline - timezone.now()).total_seconds() + 1
        read = database_sync_to_async(InferenceRequest.objects.get)
        request = await wait_until_finished(self.request.pk, seconds, read)
        stay.answered = request.is_terminal
        if request.status == Status.COMPLETED:
            return await self.send_json(
                200, completion_body(request), {**headers, **cache_headers(request)}
            )
        status, code, message = failure_of(request)
        await self.send_json(status, error_body(message, status, code), {**headers, **NO_RETRY})

    async def stream_chunks(
        self, caller: Caller, headers: dict[str, str], include_usage: bool, stay: services.Reading
    ) -> None:
        """Streamed: a role chunk, content chunks, the last chunk, ``[DONE]``."""
        request = self.request
        assert request is not None
        writer = ChunkWriter(request, include_usage)
        term = ConnectionTerm(caller)
        metrics.CONNECTIONS_OPEN.labels("openai").inc()
        try:
            await self.start_event_stream(headers)
            self.started = True
            # The comment flushes the headers at once (time to first byte).
            await self.send_body(b": keep-alive\n\n" + writer.role(request), more_body=True)
            ending = await self.relay(request.pk, writer, term, stay)
            await self.send_body(ending, more_body=False)
        finally:
            metrics.CONNECTIONS_OPEN.labels("openai").dec()

    async def relay(
        self,
        request_id: uuid.UUID,
        writer: ChunkWriter,
        term: ConnectionTerm,
        stay: services.Reading,
    ) -> bytes:
        """Send the chunks as they come; return the stream's last bytes (the answer
        when the request finished; else an error, and the request runs on)."""
        keepalive = settings.ORCHESTRATOR_SSE_KEEPALIVE_SECONDS
        last_sent, sent_text = time.monotonic(), False
        held = b""  # the chunks of tokens that came together: one write for them
        async for event in follow(request_id):
            payload = b""
            if isinstance(event, Token):
                held, sent_text = held + writer.content(event.text), True
                if event.more:
                    continue
                payload, held = held, b""
            elif isinstance(event, Reset) and sent_text:
                # A worker was lost mid-answer: the new attempt cannot be spliced on.
                fetch = f"/v1/chat/completions/{writer.head['id']}"
                message = f"The answer was interrupted and restarted; fetch {fetch}."
                return error_line(502, message, "stream_interrupted")
            elif isinstance(event, Idle) and time.monotonic() - last_sent >= keepalive:
                payload = b": keep-alive\n\n"
            elif isinstance(event, Finished):
                stay.answered = True
                if event.request.status == Status.COMPLETED:
                    return held + writer.end(event.request)
                status, code, message = failure_of(event.request)
                return held + error_line(status, message, code)
            if payload:
                await self.send_body(payload, more_body=True)
                last_sent = time.monotonic()
            try:
                await term.check()
            except Refusal as refusal:
                return error_line(refusal.status, refusal.message, refusal.code)
        return error_line(404, "The request is gone.", "not_found")


# --- the GET routes (DRF) ----------------------------------------------------------


async def require_enabled(request: Request) -> None:
    # sync_to_async, not flags.aenabled: a view's thread manages its own connection.
    if not await sync_to_async(flags.enabled)(FLAG, caller_of(request).key_prefix):
        raise NotFound(TURNED_OFF)


class V1View(APIView):
    authentication_classes = (OpenAIKeyAuthentication,)


# The schema's security for them: ApiKeyAuthentication's schemes (no session).
# (extend_schema annotates ``auth`` as strings; it is this requirement list.)
KEYS_ONLY: Any = [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}, {}]


class ModelListView(V1View):
    @extend_schema(
        operation_id="v1_models",
        auth=KEYS_ONLY,
        summary="The models /v1 accepts",
        tags=["openai"],
        responses={200: ModelListSerializer},
    )
    async def get(self, request: Request) -> Response:
        await require_enabled(request)
        return Response({"object": "list", "data": [model_object(m) for m in model_ids()]})


class ModelView(V1View):
    @extend_schema(
        operation_id="v1_model",
        auth=KEYS_ONLY,
        summary="One model",
        tags=["openai"],
        responses={
            200: ModelSerializer,
            404: OpenApiResponse(ErrorSerializer, description="No such model."),
        },
    )
    async def get(self, request: Request, model_id: str) -> Response:
        await require_enabled(request)
        resolve_model(model_id)  # 404 model_not_found
        return Response(model_object(model_id))


def parse_completion_id(value: str) -> str:
    """``chatcmpl-<hex>`` (or the bare request id) -> the request id."""
    raw = value.removeprefix("chatcmpl-")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise Http404("No completion with that id.") from None


class CompletionView(V1View):
    """``GET /v1/chat/completions/<id>``: a stored completion (OpenAI's shape).
    Fetching an abandoned request counts as resuming it; while it still runs,
    this waits (``?wait=`` seconds, by default as long as the server allows: the
    SDK knows no long-poll), then answers 409 (which the SDKs retry)."""

    @extend_schema(
        operation_id="v1_completion",
        auth=KEYS_ONLY,
        summary="A stored chat completion",
        tags=["openai"],
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "number", "minimum": 0},
                description="Seconds to wait while it runs (default and cap: the server's).",
            )
        ],
        responses={
            200: ChatCompletionResponseSerializer,
            409: OpenApiResponse(ErrorSerializer, description="Still running, or cancelled."),
            502: OpenApiResponse(ErrorSerializer, description="The backend failed."),
            504: OpenApiResponse(ErrorSerializer, description="The deadline passed."),
        },
    )
    async def get(self, request: Request, completion_id: str) -> Response:
        await require_enabled(request)
        row = await get_request_or_404(caller_of(request), parse_completion_id(completion_id))
        longest = str(settings.ORCHESTRATOR_RESULT_WAIT_MAX_SECONDS)
        row = await services.await_result(
            row, wait_seconds(request.query_params.get("wait", longest))
        )
        headers = {"X-Orchestrator-Request-Id": str(row.pk)}
        if row.status == Status.COMPLETED:
            return Response(completion_body(row), headers={**headers, **cache_headers(row)})
        if not row.is_terminal:
            body = error_body(
                "The completion is still being generated.", 409, "request_in_progress"
            )
            return Response(body, status=409, headers={**headers, "Retry-After": "1"})
        status, code, message = failure_of(row)
        return Response(
            error_body(message, status, code), status=status, headers={**headers, **NO_RETRY}
        )
