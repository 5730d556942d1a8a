"""The OpenAI chat-completions wire format, as the official SDK parses it.

What a ``/v1`` body may ask (and what it may not: a 400 naming the ``param``),
how a model name maps to a backend, and the JSON the SDK expects back. Pure
functions over rows and bodies; ``inference.openai_views`` moves the bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import serializers

from inference.admission import Refusal
from inference.errors import error_body
from inference.models import (
    PRIORITY_NORMAL,
    CacheStatus,
    InferenceRequest,
    Status,
    backend_names,
)
from inference.serializers import (
    CacheOptionsField,
    RagOptionsField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    UsageSerializer,
    cache_directives,
    unstorable,
)
from inference.services import Submission

Message = dict[str, str]

# ``developer`` is the newer name of ``system``; backends know the older one.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# vLLM's polarity: lower is sooner, 0 the default. Ours: 0-9, higher sooner, 5 normal.


def native_priority(openai_priority: int) -> int:
    return PRIORITY_NORMAL - openai_priority


def openai_priority(native: int) -> int:
    return PRIORITY_NORMAL - native


# --- models ----------------------------------------------------------------------


def _aliases(name: str) -> list[str]:
    """``backend/model`` names a configured backend answers to: its configured
    model and the upstream models it declares (``*`` for any is not listed)."""
    spec = settings.ORCHESTRATOR_BACKENDS[name]
    models = [spec.get("options", {}).get("model", ""), *spec.get("models", [])]
    return [f"{name}/{model}" for model in dict.fromkeys(models) if model and model != "*"]


def model_ids() -> list[str]:
    """Every model id ``/v1/models`` lists: each backend, then its aliases."""
    return [model for name in backend_names() for model in (name, *_aliases(name))]


def resolve_model(model: str) -> tuple[str, str]:
    """(backend, upstream model or "") for a ``/v1`` model id; 404 if unknown."""
    model = (
        model or settings.ORCHESTRATOR_OPENAI_DEFAULT_MODEL or settings.ORCHESTRATOR_DEFAULT_BACKEND
    )
    if model in settings.ORCHESTRATOR_BACKENDS:
        return model, ""
    backend, _, upstream = model.partition("/")
    spec = settings.ORCHESTRATOR_BACKENDS.get(backend)
    declared = spec is not None and f"{backend}/{upstream}" in _aliases(backend)
    if upstream and (declared or (spec is not None and "*" in spec.get("models", []))):
        return backend, upstream
    raise Refusal(
        404,
        "model_not_found",
        f"The model '{model}' does not exist. Models: {', '.join(model_ids())}.",
        param="model",
    )


class ModelSerializer(serializers.Serializer):
    """An OpenAI model object (for the schema)."""

    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["model"])
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = ModelSerializer(many=True)  # type: ignore[assignment]  # (shadows .data: OpenAI's name)


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "orchestrator"}


# --- the request -----------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        if why := unstorable(content):
            raise _invalid(where, f"It {why}.", "unstorable")
        return content
    if isinstance(content, list) and content:
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _invalid(f"{where}.{i}", "Only text content parts are supported.")
            if not isinstance(part.get("text"), str):
                raise _invalid(f"{where}.{i}.text", "A text part needs a string 'text'.")
            texts.append(part["text"])
        return _text_of("".join(texts), where)
    raise _invalid(where, "Content must be a string or a list of text parts.")


def _invalid(param: str, message: str, code: str = "invalid") -> serializers.ValidationError:
    """An error about a nested param ("messages.2.content"): nested dicts keep the path."""
    detail: Any = [serializers.ErrorDetail(message, code)]
    for name in reversed(param.split(".")):
        detail = {name: detail}
    return serializers.ValidationError(detail)


class MessagesField(serializers.Field):
    """``messages``: roles system/developer/user/assistant, text content only."""

    def to_internal_value(self, data: Any) -> list[Message]:
        if not isinstance(data, list) or not data:
            self.fail("invalid")
        messages = []
        for i, message in enumerate(data):
            role = message.get("role") if isinstance(message, dict) else None
            if not isinstance(role, str) or role not in ROLES:
                why = "tools are not supported" if role in ("tool", "function") else "unknown"
                raise _invalid(f"{i}.role", f"Role {role!r}: {why}. Use {', '.join(ROLES)}.")
            if message.get("tool_calls"):
                raise _invalid(f"{i}.tool_calls", "Tool calls are not supported.")
            messages.append(
                {"role": ROLES[role], "content": _text_of(message.get("content"), f"{i}.content")}
            )
        total = sum(len(m["content"]) for m in messages)
        if total > settings.ORCHESTRATOR_MAX_PROMPT_CHARS:
            limit = settings.ORCHESTRATOR_MAX_PROMPT_CHARS
            raise serializers.ValidationError(
                f"The messages hold more than {limit} characters.", code="max_length"
            )
        return messages

    default_error_messages = {"invalid": "A non-empty list of {{role, content}} messages."}


class StopField(serializers.Field):
    """``stop``: a string or up to four strings."""

    default_error_messages = {"invalid": "A string or a list of up to 4 strings."}

    def to_internal_value(self, data: Any) -> list[str]:
        stops = [data] if isinstance(data, str) else data
        if not (isinstance(stops, list) and len(stops) <= 4):
            self.fail("invalid")
        each = StrictCharField(max_length=64, trim_whitespace=False, allow_blank=True)
        return [stop for stop in map(each.run_validation, stops) if stop]  # "" stops nothing


# OpenAI clients send null for "not set".
OPTIONAL: dict[str, Any] = {"required": False, "allow_null": True}


# Fields the service cannot honour: a 400 naming them beats a silently wrong answer.
JSON_SCHEMA_UNSUPPORTED = "'response_format' of type 'json_schema' is not supported with this model"


PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_NAMED = 20


class ChatCompletionSerializer(serializers.Serializer):
    """The body of ``POST /v1/chat/completions``. Unknown fields are ignored
    (new ones appear monthly) and named in ``X-Orchestrator-Ignored-Params``."""

    model = StrictCharField(max_length=200, required=False, allow_blank=True)
    messages = MessagesField()
    temperature = StrictFloatField(min_value=0.0, max_value=2.0, **OPTIONAL)
    top_p = StrictFloatField(min_value=0.0, max_value=1.0, **OPTIONAL)
    max_tokens = StrictIntegerField(
        min_value=1, max_value=settings.ORCHESTRATOR_MAX_TOKENS_CEILING, **OPTIONAL
    )
    max_completion_tokens = StrictIntegerField(
        min_value=1, max_value=settings.ORCHESTRATOR_MAX_TOKENS_CEILING, **OPTIONAL
    )
    stop = StopField(**OPTIONAL)
    seed = StrictIntegerField(min_value=-(2**63), max_value=2**63 - 1, **OPTIONAL)
    stream = StrictBooleanField(**OPTIONAL)
    stream_options = serializers.DictField(**OPTIONAL)
    user = StrictCharField(max_length=256, allow_blank=True, **OPTIONAL)
    # Asked for, but not something this service can do yet:
    n = StrictIntegerField(**OPTIONAL)
    logprobs = StrictBooleanField(**OPTIONAL)
    top_logprobs = StrictIntegerField(**OPTIONAL)
    tools = serializers.ListField(**OPTIONAL)
    tool_choice = serializers.JSONField(**OPTIONAL)
    functions = serializers.ListField(**OPTIONAL)
    function_call = serializers.JSONField(**OPTIONAL)
    response_format = serializers.DictField(**OPTIONAL)
    # Extensions, top-level as vLLM has them (SDKs send them via extra_body).
    priority = StrictIntegerField(
        min_value=PRIORITY_NORMAL - 9, max_value=PRIORITY_NORMAL, **OPTIONAL
    )
    rag = RagOptionsField(required=False)
    deadline_seconds = StrictFloatField(
        min_value=1.0, max_value=settings.ORCHESTRATOR_MAX_DEADLINE_SECONDS, **OPTIONAL
    )
    session_id = StrictCharField(max_length=128, **OPTIONAL)
    cache = CacheOptionsField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unsupported = {
            "n": attrs.get("n") not in (None, 1) and "Only n=1 is supported.",
            "logprobs": attrs.get("logprobs") and "logprobs are not supported.",
            "top_logprobs": attrs.get("top_logprobs") is not None and "logprobs are not supported.",
            "tools": attrs.get("tools") and "Tools are not supported by these backends.",
            "functions": attrs.get("functions") and "Functions are not supported.",
            "tool_choice": attrs.get("tool_choice") not in (None, "none")
            and "Tools are not supported by these backends.",
            "function_call": attrs.get("function_call") not in (None, "none")
            and "Functions are not supported.",
            "response_format": self._response_format_problem(attrs.get("response_format")),
            "stream_options": attrs.get("stream_options") is not None
            and not attrs.get("stream")
            and "stream_options is only allowed when stream is true.",
        }
        for param, problem in unsupported.items():
            if problem:
                raise _invalid(param, problem, "unsupported_parameter")
        return attrs

    @staticmethod
    def _response_format_problem(value: dict[str, Any] | None) -> str | None:
        kind = (value or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_schema":
            return JSON_SCHEMA_UNSUPPORTED
        return f"'response_format' of type '{kind}' is not supported with this model"

    def ignored_params(self) -> list[str]:
        """Unknown top-level fields, as a header can carry them: names that are
        not plain identifiers are counted, not echoed."""
        ignored = sorted(set(self.initial_data) - set(self.fields))
        named = [name for name in ignored if PARAM_NAME.fullmatch(name)][:MAX_NAMED]
        unnamed = len(ignored) - len(named)
        return [*named, f"({unnamed} more)"] if unnamed else named

    @property
    def include_usage(self) -> bool:
        return bool((self.validated_data.get("stream_options") or {}).get("include_usage"))

    def to_submission(self, headers: Mapping[str, str] | None = None, **context: Any) -> Submission:
        """``headers``: the HTTP request's, for its cache directives."""
        data = self.validated_data
        backend, upstream = resolve_model(data.get("model") or "")
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        params: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": data.get("temperature"),
            "top_p": data.get("top_p"),
            "stop": data.get("stop"),
            "seed": data.get("seed"),
            "model": upstream,
            # The caller owns the conversation: retrieval only when asked for.
            "rag": data.get("rag", {"enabled": False}),
        }
        user = data.get("user")
        priority = data.get("priority")
        return Submission(
            prompt=last_user_text(data["messages"]),
            conversation=data["messages"],
            session_id=data.get("session_id") or "",
            metadata={"user": user} if user else {},
            priority=PRIORITY_NORMAL if priority is None else native_priority(priority),
            backend=backend,
            params={name: value for name, value in params.items() if value not in (None, "", [])},
            deadline_seconds=data.get("deadline_seconds"),
            cache_control=cache_directives(headers or {}, data.get("cache")),
            **context,
        )


def last_user_text(messages: list[Message]) -> str:
    """What a row's ``prompt`` shows: the last user message (or the last message)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


# --- the response ----------------------------------------------------------------


def completion_id(request: InferenceRequest) -> str:
    return f"chatcmpl-{request.pk.hex}"


def model_name(request: InferenceRequest) -> str:
    upstream = request.params.get("model")
    return f"{request.backend}/{upstream}" if upstream else request.backend


def usage_of(request: InferenceRequest) -> dict[str, int]:
    return {
        "prompt_tokens": request.prompt_tokens,
        "completion_tokens": request.completion_tokens,
        "total_tokens": request.prompt_tokens + request.completion_tokens,
    }


def extension(request: InferenceRequest) -> dict[str, Any]:
    """What only this service knows: the durable id to resume or fetch by."""
    return {
        "request_id": str(request.pk),
        "priority": openai_priority(request.priority),
        "status": request.status,
        **request.cache_report,
    }


class CompletionMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["assistant"])
    content = serializers.CharField()
    refusal = serializers.CharField(allow_null=True)


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = CompletionMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.CharField()


class ExtensionSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    priority = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Status.choices)
    cache_status = serializers.ChoiceField(choices=CacheStatus.choices, allow_blank=True)
    cache_source = serializers.UUIDField(allow_null=True)


class ChatCompletionResponseSerializer(serializers.Serializer):
    """A ``chat.completion`` (for the schema: ``completion_body`` builds it)."""

    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["chat.completion"])
    created = serializers.IntegerField()
    model = serializers.CharField()
    system_fingerprint = serializers.CharField(allow_null=True)
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer()
    orchestrator = ExtensionSerializer()


def completion_body(request: InferenceRequest) -> dict[str, Any]:
    """A finished request as a ``chat.completion`` object."""
    return {
        "id": completion_id(request),
        "object": "chat.completion",
        "created": int(request.created_at.timestamp()),
        "model": model_name(request),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": request.result or "", "refusal": None},
                "logprobs": None,
                "finish_reason": request.finish_reason or "stop",
            }
        ],
        "usage": usage_of(request),
        "orchestrator": extension(request),
    }


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one request, as SSE bytes: only
    ``data:`` lines (an ``id:`` line would break the SDK's decoder)."""

    def __init__(self, request: InferenceRequest, include_usage: bool) -> None:
        self.head = {
            "id": completion_id(request),
            "object": "chat.completion.chunk",
            "created": int(request.created_at.timestamp()),
            "model": model_name(request),
            "system_fingerprint": None,
        }
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body = {**self.head, "choices": [choice], **extra}
        if self.include_usage:
            body["usage"] = None
        return data_line(body)

    def role(self, request: InferenceRequest) -> bytes:
        return self.chunk({"role": "assistant"}, orchestrator=extension(request))

    def content(self, text: str) -> bytes:
        return self.chunk({"content": text})

    def end(self, request: InferenceRequest) -> bytes:
        """The last chunk, the usage chunk if asked for, then ``[DONE]``. The last
        chunk repeats the extension: by now it says what the cache did."""
        final = self.chunk({}, request.finish_reason or "stop", orchestrator=extension(request))
        if self.include_usage:
            final += data_line({**self.head, "choices": [], "usage": usage_of(request)})
        return final + b"data: [DONE]\n\n"


def data_line(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def error_line(status: int, message: str, code: str) -> bytes:
    """A failure after the 200: the SDK raises on a data object with ``error``."""
    return data_line(error_body(message, status, code))


def failure_of(request: InferenceRequest) -> tuple[int, str, str]:
    """(status, code, message) of a request that ended without an answer (or
    is still running when its caller's wait is over)."""
    if not request.is_terminal:
        return 504, "timeout", "The request did not finish in time; fetch it later."
    statuses = {Status.EXPIRED.value: 504, Status.CANCELLED.value: 409}
    status = statuses.get(request.status, 502)
    code = request.error_code or str(request.status)
    return status, code, request.error or f"The request {request.status}."
