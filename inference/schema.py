"""OpenAPI additions: the API key security schemes, and the routes served by
Channels consumers rather than DRF views."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

# What any API operation can answer besides its own results.
COMMON_ERRORS = {
    "400": "Invalid input (body, query or headers).",
    "401": "Missing, malformed, invalid, revoked or expired API key.",
    "403": "Authenticated, but not allowed.",
    "429": "Rate limited (see Retry-After and the RateLimit headers), or a submit over the "
    "key's budget (budget_exceeded, x-should-retry: false: not before x-budget-reset).",
    "503": "Database unavailable; see Retry-After.",
}


class OrchestratorAutoSchema(AutoSchema):
    """Documents the errors every ``/api/v1`` operation shares (plus 404 where
    the path names a resource), so that views declare only their own answers."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        from inference.serializers import ErrorSerializer

        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if direction != "response" or not self.path.startswith(("/api/v1/", "/v1/")):
            return responses
        errors = dict(COMMON_ERRORS)
        if "{" in self.path:
            errors["404"] = "No such resource (or not yours)."
        for code, description in errors.items():
            if code not in responses:
                error = OpenApiResponse(ErrorSerializer, description=description)
                responses[code] = self._get_response_for_code(error, code)
        return responses

    def _map_serializer(
        self, serializer: Any, direction: Any, bypass_extensions: bool = False
    ) -> Any:
        """A body that refuses unknown fields (``KnownFieldsOnly``) says so."""
        from inference.serializers import KnownFieldsOnly

        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, KnownFieldsOnly):
            schema["additionalProperties"] = False
        return schema

    def _map_serializer_field(
        self, field: Any, direction: Any, bypass_extensions: bool = False
    ) -> Any:
        """A nested list of objects keeps its bounds (a batch's 1 to max_batch items)."""
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(field, serializers.ListSerializer):
            bounds = {"minItems": getattr(field, "min_length", None)}
            bounds["maxItems"] = getattr(field, "max_length", None)
            schema.update({name: value for name, value in bounds.items() if value is not None})
        return schema


class BackendChoices(OpenApiSerializerFieldExtension):
    """A backend name is one of the configured backends, read when the schema is
    generated (the configuration decides the enum)."""

    target_class = "inference.serializers.BackendChoiceField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        from inference.models import backend_names

        return {"type": "string", "enum": backend_names(), "description": "A model backend."}


class ApiKeySchemes(OpenApiAuthenticationExtension):
    """``inference.drf.ApiKeyAuthentication``: a bearer token or an X-API-Key header."""

    target_class = "inference.drf.ApiKeyAuthentication"
    name = ["ApiKeyBearer", "ApiKeyHeader"]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]


SSE_DESCRIPTION = """\
Server-Sent Events: the request's tokens as they are generated.

Events: `start` `{request_id}`; `token` `{chunk, data}` with `id: <seq>` (a retried
attempt's ids are `<attempt>:<seq>`); `reset` `{attempt}` when a new attempt starts
(discard what was received); `complete` `{status: "done", result}`; `error`
`{error, status}`. A `: keepalive` comment about every 15 s. Send `Last-Event-ID`
to resume after that id; a late subscriber first receives every earlier token,
exactly once, in order.

The WebSocket protocol at `/api/v1/ws` is described in the README.
"""


# One Server-Sent Event as parsed off the wire (``data`` is a JSON document).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["start", "token", "reset", "complete", "error"]},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["event", "data"],
}


# One event of a /v1 stream as parsed off the wire: only data lines.
CHAT_CHUNK_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def chat_completions_operation(error: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/chat/completions`` (a consumer): the fields it honours; others
    are accepted and ignored, as OpenAI clients expect."""
    from inference.openai_wire import model_ids
    from inference.serializers import (
        CACHE_HEADER_PARAMETERS,
        CACHE_OPTIONS_SCHEMA,
        NOT_BLANK_PATTERN,
        RAG_OPTIONS_SCHEMA,
    )

    number = {"type": "number", "nullable": True}
    text_part = {
        "type": "object",
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
        "required": ["type", "text"],
    }
    message = {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": text_part, "minItems": 1}]
            },
        },
        "required": ["role", "content"],
    }
    max_tokens = {
        "type": "integer",
        "minimum": 1,
        "maximum": settings.ORCHESTRATOR_MAX_TOKENS_CEILING,
        "nullable": True,
    }
    stop = {"type": "string", "maxLength": 64}
    request = {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "enum": model_ids(),
                "description": "Left out: openai.default_model (else the default backend).",
            },
            "messages": {"type": "array", "items": message, "minItems": 1},
            "temperature": {**number, "minimum": 0, "maximum": 2},
            "top_p": {**number, "minimum": 0, "maximum": 1},
            "max_tokens": max_tokens,
            "max_completion_tokens": max_tokens,
            "stop": {
                "oneOf": [stop, {"type": "array", "items": stop, "maxItems": 4}],
                "nullable": True,
            },
            "seed": {
                "type": "integer",
                "minimum": -(2**63),
                "maximum": 2**63 - 1,
                "nullable": True,
            },
            "stream": {
                "type": "boolean",
                "nullable": True,
                "description": (
                    "true: Server-Sent Events (data: lines, then [DONE]); "
                    "stream_options.include_usage adds a usage chunk."
                ),
            },
            "user": {"type": "string", "maxLength": 256, "nullable": True},
            "priority": {
                "type": "integer",
                "minimum": -4,
                "maximum": 5,
                "nullable": True,
                "description": "Extension (vLLM's polarity): lower runs sooner; 0 is normal.",
            },
            "rag": {**RAG_OPTIONS_SCHEMA, "description": "Extension: retrieval (off by default)."},
            "deadline_seconds": {
                "type": "number",
                "minimum": 1,
                "maximum": settings.ORCHESTRATOR_MAX_DEADLINE_SECONDS,
                "nullable": True,
                "description": "Extension.",
            },
            "session_id": {
                "type": "string",
                "maxLength": 128,
                "pattern": NOT_BLANK_PATTERN,
                "nullable": True,
                "description": "Extension: groups requests.",
            },
            "cache": {**CACHE_OPTIONS_SCHEMA, "description": "Extension: cache directives."},
        },
        "required": ["messages"],
    }
    return {
        "post": {
            "operationId": "v1_chat_completions",
            "summary": "Create a chat completion (OpenAI-compatible; a durable request)",
            "description": (
                "Streamed or not. Errors are OpenAI's envelope. The response's "
                "`X-Orchestrator-Request-Id` resumes a dropped stream at "
                "`GET /api/v1/stream/{id}` or fetches it at `GET /v1/chat/completions/{id}`."
            ),
            "tags": ["openai"],
            "security": [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}, {}],
            "parameters": [
                {"name": p.name, "in": "header", "schema": p.type, "description": p.description}
                for p in CACHE_HEADER_PARAMETERS
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {
                "200": {
                    "description": "A chat.completion, or its chunks as an event stream.",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": CHAT_CHUNK_EVENT},
                    },
                },
                **{
                    code: {"description": description, "content": error}
                    for code, description in {
                        **COMMON_ERRORS,
                        "404": "Unknown model (code model_not_found).",
                        "422": "An Idempotency-Key reused for another request.",
                        "409": "The request was cancelled.",
                        "502": "The backend failed.",
                        "504": "The deadline passed.",
                    }.items()
                },
            },
        }
    }


def add_streaming_routes(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOK: document the routes consumers serve,
    ``GET /api/v1/stream/{id}`` and ``POST /v1/chat/completions``."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    result["paths"]["/v1/chat/completions"] = chat_completions_operation(error)
    result["paths"]["/api/v1/stream/{request_id}"] = {
        "get": {
            "operationId": "stream",
            "summary": "Stream a request's tokens (Server-Sent Events)",
            "description": SSE_DESCRIPTION,
            "tags": ["api"],
            "security": [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}, {"cookieAuth": []}, {}],
            "parameters": [
                {
                    "name": "request_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                },
                {
                    "name": "token",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": (
                        "The request's `stream_token` (from `POST /infer` or `GET /status`), "
                        "for clients that cannot send headers (EventSource)."
                    ),
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this event id.",
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {"text/event-stream": {"schema": SSE_EVENT}},
                },
                "401": {"description": "No valid key or stream token.", "content": error},
                "403": {"description": "Authenticated, but not allowed.", "content": error},
                "404": {"description": "Unknown request id (or not yours).", "content": error},
                "429": {"description": "Rate limited; see Retry-After.", "content": error},
                "503": {"description": "Database unavailable.", "content": error},
            },
        }
    }
    return result
