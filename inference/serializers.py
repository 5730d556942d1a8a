"""Request validation and the public JSON shapes (reference/phase3-web-api.md)."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.core.validators import RegexValidator
from django.http import QueryDict
from django.utils.dateparse import parse_datetime
from django.utils.functional import Promise
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from inference.auth import stream_token
from inference.drf import unknown_field
from inference.models import (
    TIERS,
    CacheStatus,
    Document,
    InferenceRequest,
    Status,
    backend_names,
)
from inference.services import Submission

PRIORITY_NAMES = TIERS  # a tier's name stands for its lowest priority
# Submit fields stored together in the request's ``params``.
REQUEST_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "rag", "system")
MAX_RAG_DOCUMENTS = 100


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored and returned as JSON text, or None: PostgreSQL
    refuses NUL, and a lone surrogate is not Unicode (no encoder can write it)."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def json_problem(value: Any, max_depth: int) -> tuple[str, str] | None:
    """(code, why) if a JSON value is nested deeper than ``max_depth`` levels of
    objects/arrays, holds a non-finite number (NaN, 1e400) or an unstorable
    string; else None. Iterative: a 900-deep value must not exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return "max_depth", f"is nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, float) and not math.isfinite(item):
            return "not_finite", "contains a number that is not finite (NaN or infinity)"
        elif isinstance(item, str) and (why := unstorable(item)):
            return "unstorable", why
    return None


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 9},
            {"type": "string", "enum": list(PRIORITY_NAMES)},
        ],
        "description": "0 (lowest) to 9 (highest), or low/normal/high.",
    }
)
class PriorityField(serializers.Field):
    default_error_messages = {
        "invalid": "Use an integer from 0 to 9 or one of: background, low, normal, high.",
    }

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str) and data in PRIORITY_NAMES:
            return PRIORITY_NAMES[data]
        if isinstance(data, int) and not isinstance(data, bool) and 0 <= data <= 9:
            return data
        self.fail("invalid")

    def to_representation(self, value: int) -> int:
        return value


# Some character that is not whitespace as Python's str.strip() sees it (which DRF
# trims with), spelled out so that the schema's pattern means the same in ECMA regex.
NOT_BLANK_PATTERN = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
NOT_BLANK = RegexValidator(NOT_BLANK_PATTERN, "This field may not be blank.", code="blank")


class StrictCharField(serializers.CharField):
    """A string, and only a string (DRF would coerce 42 to "42"), that can be
    stored and sent back."""

    default_error_messages = {"not_a_string": "Must be a string.", "unstorable": "It {why}."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.trim_whitespace and not self.allow_blank:
            self.validators.append(NOT_BLANK)  # what trimming leaves blank, in the schema too

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        if why := unstorable(data):
            self.fail("unstorable", why=why)
        return super().to_internal_value(data)


StrOrPromise = str | Promise


class StrictJSONTypes:
    """Numbers and booleans as JSON types only: DRF would read "1" or false as
    numbers and "yes" as true, which the schema does not promise."""

    json_types: tuple[type, ...] = ()
    default_error_messages: ClassVar[dict[str, StrOrPromise]] = {
        "wrong_type": "Must be a JSON {kind}."
    }
    kind = ""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) != (bool in self.json_types) or not isinstance(
            data, self.json_types
        ):
            self.fail("wrong_type", kind=self.kind)  # type: ignore[attr-defined]
        return super().to_internal_value(data)  # type: ignore[misc]


# (The DRF stubs type each field's messages differently; the merge is DRF's own.)
class StrictIntegerField(StrictJSONTypes, serializers.IntegerField):  # type: ignore[misc]
    json_types, kind = (int,), "integer"


class StrictFloatField(StrictJSONTypes, serializers.FloatField):  # type: ignore[misc]
    json_types, kind = (int, float), "number"


class StrictBooleanField(StrictJSONTypes, serializers.BooleanField):  # type: ignore[misc]
    json_types, kind = (bool,), "boolean"


class BackendChoiceField(StrictCharField):
    """A configured backend's name; the error lists the valid ones."""

    def to_internal_value(self, data: Any) -> str:
        name = super().to_internal_value(data)
        if name not in backend_names():
            raise serializers.ValidationError(
                f"Unknown backend {name!r}. Valid backends: {', '.join(backend_names())}.",
                code="unknown_backend",
            )
        return name


def is_row_id(value: Any) -> bool:
    """An integer a database id column can hold (a 64-bit one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


RAG_OPTIONS_SCHEMA = {
    "oneOf": [
        {"type": "boolean"},
        {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "top_k": {"type": "integer", "minimum": 0, "maximum": 20},
                "documents": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                    "maxItems": MAX_RAG_DOCUMENTS,
                },
            },
            "additionalProperties": False,
        },
    ],
    "description": "Retrieval: false turns it off; an object sets top_k / document ids.",
}


@extend_schema_field(RAG_OPTIONS_SCHEMA)
class RagOptionsField(serializers.Field):
    default_error_messages = {
        "invalid": (
            "Use true/false or {{enabled?, top_k? (0-20), documents? [up to 100 document ids]}}."
        ),
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, bool):
            return {"enabled": data}
        if not isinstance(data, dict) or set(data) - {"enabled", "top_k", "documents"}:
            self.fail("invalid")
        top_k = data.get("top_k", 0)
        documents = data.get("documents", [])
        valid = (
            isinstance(data.get("enabled", True), bool)
            and isinstance(top_k, int)
            and not isinstance(top_k, bool)
            and 0 <= top_k <= 20
            and isinstance(documents, list)
            and len(documents) <= MAX_RAG_DOCUMENTS
            and all(is_row_id(d) for d in documents)
        )
        if not valid:
            self.fail("invalid")
        return dict(data)

    def to_representation(self, value: Any) -> Any:
        return value


# --- cache directives --------------------------------------------------------------
CACHE_MODES = ("auto", "refresh", "bypass", "force")
CACHE_OPTIONS_SCHEMA = {
    "type": "object",
    "description": (
        "Cache directives (the body twin of Cache-Control). mode: auto (the server "
        "decides: deterministic requests), refresh (generate, then store), bypass "
        "(neither read nor store), force (cache even a sampled request); max_age: "
        "accept entries at most this many seconds old; ttl: how long this answer serves."
    ),
    "properties": {
        "mode": {"type": "string", "enum": list(CACHE_MODES)},
        "max_age": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "ttl": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    },
    "additionalProperties": False,
}


# The same directives as request headers (REST and /v1).
CACHE_HEADER_PARAMETERS = [
    OpenApiParameter(
        "Cache-Control",
        {"type": "string"},
        OpenApiParameter.HEADER,
        description="no-cache (refresh), no-store (bypass), max-age=N; others are ignored.",
    ),
    OpenApiParameter(
        "X-Orchestrator-Cache",
        {"type": "string", "enum": list(CACHE_MODES)},
        OpenApiParameter.HEADER,
        description="A cache mode (force: cache even a sampled request).",
    ),
]


@extend_schema_field(CACHE_OPTIONS_SCHEMA)
class CacheOptionsField(serializers.Field):
    default_error_messages = {
        "invalid": (
            "Use {{mode? (auto, refresh, bypass, force), max_age? (seconds, 0 or more), "
            "ttl? (seconds, 1 or more)}}."
        ),
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or set(data) - {"mode", "max_age", "ttl"}:
            self.fail("invalid")
        valid = (
            data.get("mode", "auto") in CACHE_MODES
            and _seconds(data.get("max_age", 0), 0)
            and _seconds(data.get("ttl", 1), 1)
        )
        if not valid:
            self.fail("invalid")
        return dict(data)

    def to_representation(self, value: Any) -> Any:
        return value


def _seconds(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value < 2**31


def cache_directives(headers: Mapping[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
    """What a request says to the cache: ``Cache-Control`` (``no-store``: bypass,
    ``no-cache``: refresh, ``max-age=N``) and ``X-Orchestrator-Cache`` (a mode),
    then the body's ``cache`` field over them. Unknown Cache-Control directives
    are ignored, as HTTP caches do; an unknown mode is a 400."""
    directives: dict[str, Any] = {}
    for directive in headers.get("cache-control", "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name == "no-store":
            directives["mode"] = "bypass"
        elif name == "no-cache" and directives.get("mode") != "bypass":
            directives["mode"] = "refresh"
        elif name == "max-age" and value.strip().isdigit():
            directives["max_age"] = min(int(value), 2**31 - 1)
    if "x-orchestrator-cache" in headers:
        mode = headers["x-orchestrator-cache"].strip().lower()
        if mode not in CACHE_MODES:
            message = f"Use one of: {', '.join(CACHE_MODES)}."
            raise serializers.ValidationError({"X-Orchestrator-Cache": [message]})
        directives["mode"] = mode
    return {**directives, **(body or {})}


# RFC 9211's Cache-Status for what the cache did (the cache is named "orchestrator").
CACHE_STATUS_HEADER: dict[str, str] = {
    CacheStatus.HIT: "orchestrator; hit",
    CacheStatus.COLLAPSED: "orchestrator; fwd=uri-miss; collapsed",
    CacheStatus.STORED: "orchestrator; fwd=uri-miss; stored",
    CacheStatus.MISS: "orchestrator; fwd=uri-miss",
    CacheStatus.BYPASS: "orchestrator; fwd=request",
    CacheStatus.INELIGIBLE: "orchestrator; fwd=bypass",
    CacheStatus.DETACHED: "orchestrator; fwd=bypass",
}


def cache_headers(request: InferenceRequest) -> dict[str, str]:
    """``Cache-Status`` of a finished request, and on hits and stores the key an
    owner may delete the entry by (``DELETE /api/v1/cache/<key>``)."""
    if not request.is_terminal or not request.cache_status:
        return {}
    status = CACHE_STATUS_HEADER.get(request.cache_status, "orchestrator")
    if (
        request.cache_status == CacheStatus.STORED
        and request.cache_control.get("mode") == "refresh"
    ):
        status = "orchestrator; fwd=request; stored"
    headers = {"Cache-Status": status}
    if request.cache_key and request.cache_status in (CacheStatus.HIT, CacheStatus.STORED):
        headers["X-Orchestrator-Cache-Key"] = request.cache_key
    return headers


CACHE_KEY = re.compile(r"[0-9a-f]{64}")


class CacheStatsSerializer(serializers.Serializer):
    entries = serializers.IntegerField(help_text="Answers that serve repeats now.")
    hits = serializers.IntegerField(help_text="Requests answered from the cache.")
    misses = serializers.IntegerField(help_text="Cacheable requests that were generated.")
    collapsed = serializers.IntegerField(help_text="Requests that shared an in-flight call.")
    hit_rate = serializers.FloatField(help_text="hits / (hits + misses + collapsed).")
    saved_tokens = serializers.IntegerField(help_text="Tokens no backend was asked for.")
    evictions = serializers.IntegerField()
    epoch = serializers.IntegerField(help_text="Bumped by each flush.")
    window_seconds = serializers.IntegerField(help_text="The window the counts cover.")


class KnownFieldsOnly(serializers.Serializer):
    """An input whose every field the API has: an unknown one is a 400 naming it
    (a misspelt ``max_token`` silently ignored gave a default the client never chose).
    In a query string, an empty ``name=`` is a 400 too: DRF would read it as absent
    and quietly use the default."""

    unknown_what = "field"  # what a name is called in the 400: "query parameter" for a query

    def to_internal_value(self, data: Any) -> Any:
        self.check_names(data)
        return super().to_internal_value(data)

    def check_names(self, data: Any) -> None:
        if isinstance(data, Mapping):
            what = self.unknown_what
            unknown = {
                name: [unknown_field(name, self.fields, what)]
                for name in data
                if name not in self.fields
            }
            if unknown:
                raise serializers.ValidationError(unknown)
        if isinstance(data, QueryDict):
            blank = ErrorDetail("This parameter may not be empty.", code="blank")
            empty = [name for name, value in data.items() if value == ""]
            if empty := [n for n in empty if not getattr(self.fields[n], "allow_blank", False)]:
                raise serializers.ValidationError({name: [blank] for name in empty})


def context_window(backend: str) -> int | None:
    """The context window of ``backend``'s model, in tokens, if configured (the
    local model's is its n_ctx); None: not known here, not checked."""
    spec = settings.ORCHESTRATOR_BACKENDS.get(backend) or {}
    return spec.get("context_tokens") or spec.get("options", {}).get("n_ctx")


class UsageQuerySerializer(KnownFieldsOnly):
    """``GET /api/v1/usage``'s query: a window (default: the last 30 days) and groups."""

    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    group_by = serializers.MultipleChoiceField(
        choices=["day", "key", "model"],
        required=False,
        help_text="Repeat or comma-separate: day (UTC), key, model (with its backend).",
    )
    key = StrictCharField(
        required=False, max_length=16, help_text="Staff: one key's usage (its prefix)."
    )

    unknown_what = "query parameter"

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        self.check_names(data)
        flat = {name: data.get(name) for name in ("since", "until", "key") if name in data}
        groups = [g for value in data.getlist("group_by") for g in value.split(",") if g]
        return super().to_internal_value({**flat, "group_by": groups or ["day"]})


class UsageRowSerializer(serializers.Serializer):
    day = serializers.DateField(required=False)
    key = serializers.CharField(required=False, allow_null=True, help_text="null: anonymous")
    backend = serializers.CharField(required=False)
    model = serializers.CharField(required=False)
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=8)


class UsageReportSerializer(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    group_by = serializers.ListField(child=serializers.CharField())
    rows = UsageRowSerializer(many=True)


class CacheFlushSerializer(serializers.Serializer):
    epoch = serializers.IntegerField()
    entries_removed = serializers.IntegerField()


class InferRequestSerializer(KnownFieldsOnly):
    """The body of ``POST /api/v1/infer`` (and of a WebSocket submit)."""

    # NOT_BLANK puts "some non-space character" in the schema too.
    prompt = StrictCharField(trim_whitespace=False, validators=[NOT_BLANK])
    session_id = StrictCharField(required=False, max_length=128, allow_blank=False)
    metadata = serializers.DictField(required=False, default=dict)
    stream = StrictBooleanField(required=False, default=False)
    priority = PriorityField(required=False, default=5)
    backend = BackendChoiceField(required=False, max_length=64)
    max_tokens = StrictIntegerField(
        required=False, min_value=1, max_value=settings.ORCHESTRATOR_MAX_TOKENS_CEILING
    )
    temperature = StrictFloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    stop = serializers.ListField(
        child=StrictCharField(max_length=64, trim_whitespace=False),
        required=False,
        max_length=4,
    )
    deadline_seconds = StrictFloatField(
        required=False, min_value=1.0, max_value=settings.ORCHESTRATOR_MAX_DEADLINE_SECONDS
    )
    rag = RagOptionsField(required=False)
    cache = CacheOptionsField(required=False)
    system = StrictCharField(
        required=False,
        trim_whitespace=False,
        max_length=settings.ORCHESTRATOR_MAX_PROMPT_CHARS,
        help_text="A system prompt for this request, instead of the configured one.",
    )

    def to_internal_value(self, data: Any) -> Any:
        attrs = super().to_internal_value(data)
        # The seed's clients put "priority" inside metadata; honour it there too.
        hint = attrs["metadata"].get("priority")
        if "priority" not in data and hint is not None:
            try:
                attrs["priority"] = PriorityField().to_internal_value(hint)
            except serializers.ValidationError:
                pass  # free-form metadata: an unknown hint is not an error
        return attrs

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self.check_context(attrs)
        return attrs

    @staticmethod
    def check_context(attrs: dict[str, Any]) -> None:
        """Refuse a prompt that cannot fit its model's context with its max_tokens
        (estimated at four characters a token, as admission does: the model's own
        tokenizer is not loaded in a web process), not accept it to fail later."""
        backend = attrs.get("backend") or settings.ORCHESTRATOR_DEFAULT_BACKEND
        window = context_window(backend)
        max_tokens = attrs.get("max_tokens") or settings.ORCHESTRATOR_DEFAULT_MAX_TOKENS
        # The prompt and its own system prompt (a session's history and retrieved
        # passages are trimmed to fit by Assemble; they are not counted here).
        prompt_tokens = (len(attrs["prompt"]) + len(attrs.get("system", ""))) // 4
        if window and prompt_tokens + max_tokens > window:
            message = (
                f"This prompt is about {prompt_tokens} tokens and max_tokens is {max_tokens}: "
                f"together more than the {window}-token context of {backend!r}. "
                "Shorten the prompt or lower max_tokens."
            )
            detail = ErrorDetail(message, code="context_length_exceeded")
            raise serializers.ValidationError({"prompt": [detail]})

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The prompt is empty.", code="blank")
        limit = settings.ORCHESTRATOR_MAX_PROMPT_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(
                f"The prompt is longer than {limit} characters.", code="max_length"
            )
        return value

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if problem := json_problem(value, settings.ORCHESTRATOR_MAX_METADATA_DEPTH):
            code, why = problem
            raise serializers.ValidationError(f"Metadata {why}.", code=code)
        limit = settings.ORCHESTRATOR_MAX_METADATA_BYTES
        if len(json.dumps(value)) > limit:
            raise serializers.ValidationError(
                f"Metadata is larger than {limit} bytes of JSON.", code="max_length"
            )
        return value

    def to_submission(self, headers: Mapping[str, str] | None = None, **context: Any) -> Submission:
        """``headers``: the HTTP request's, for its cache directives."""
        return self.submission_of(self.validated_data, headers, **context)

    @staticmethod
    def submission_of(
        data: Mapping[str, Any], headers: Mapping[str, str] | None = None, **context: Any
    ) -> Submission:
        """A validated body as a submission."""
        params = {key: data[key] for key in REQUEST_PARAMS if key in data}
        return Submission(
            prompt=data["prompt"],
            session_id=data.get("session_id", ""),
            metadata=data["metadata"],
            priority=data["priority"],
            backend=data.get("backend", ""),
            params=params,
            deadline_seconds=data.get("deadline_seconds"),
            cache_control=cache_directives(headers or {}, data.get("cache")),
            **context,
        )


class BatchInferSerializer(KnownFieldsOnly):
    """The body of ``POST /api/v1/infer/batch``: requests that are each exactly a
    ``POST /api/v1/infer`` body; one invalid item refuses them all."""

    # (min_length and max_length go to the ListSerializer, which the stubs miss.)
    requests = InferRequestSerializer(  # type: ignore[call-arg]
        many=True, min_length=1, max_length=settings.ORCHESTRATOR_MAX_BATCH
    )

    def to_submissions(
        self, headers: Mapping[str, str] | None = None, **context: Any
    ) -> list[Submission]:
        submission_of = InferRequestSerializer.submission_of
        return [submission_of(item, headers, **context) for item in self.validated_data["requests"]]


IDEMPOTENCY_KEY = StrictCharField(max_length=255)


def idempotency_key_of(header: str | None) -> str | None:
    """The ``Idempotency-Key`` header, held to the WebSocket field's rules."""
    if not header:
        return None
    try:
        return IDEMPOTENCY_KEY.run_validation(header)
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({"Idempotency-Key": exc.detail}) from None


class WebSocketSubmitSerializer(InferRequestSerializer):
    """A WebSocket ``infer`` message: the REST body, streaming by default."""

    type = serializers.ChoiceField(choices=["infer"], required=False)
    stream = StrictBooleanField(required=False, default=True)
    idempotency_key = StrictCharField(required=False, max_length=255)

    def to_submission(self, headers: Mapping[str, str] | None = None, **context: Any) -> Submission:
        key = self.validated_data.get("idempotency_key") or None
        return super().to_submission(headers, idempotency_key=key, **context)


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    estimated = serializers.BooleanField(
        help_text="The counts are an estimate: the backend reported none (e.g. an upstream "
        "that sends no usage, or a stream cut before it counted)."
    )


# Declared field by field rather than as a ModelSerializer: model introspection on
# every instantiation was a tenth of a submit's CPU (bench/).
class InferenceRequestSerializer(serializers.Serializer):
    """A request as the API shows it: the seed's five fields, then the rest."""

    request_id = serializers.UUIDField(source="id", read_only=True)
    session_id = serializers.CharField(read_only=True)
    status = serializers.ChoiceField(choices=Status.choices, read_only=True)
    result = serializers.CharField(read_only=True, allow_null=True)
    error = serializers.CharField(read_only=True, allow_null=True)
    error_code = serializers.CharField(read_only=True)
    metadata = serializers.JSONField(read_only=True)
    priority = serializers.IntegerField(
        read_only=True, help_text="The priority it runs at (0-9, higher sooner)."
    )
    priority_requested = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="What it asked for: a key's ceiling may clamp it, aging may raise it.",
    )
    backend = serializers.CharField(read_only=True)
    backend_used = serializers.CharField(read_only=True)
    params = serializers.JSONField(read_only=True)
    attempt = serializers.IntegerField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    started_at = serializers.DateTimeField(read_only=True, allow_null=True)
    finished_at = serializers.DateTimeField(read_only=True, allow_null=True)
    deadline_at = serializers.DateTimeField(read_only=True, allow_null=True)
    usage = UsageSerializer(read_only=True)
    model_used = serializers.CharField(read_only=True, help_text="The model that answered.")
    cost = serializers.DecimalField(
        max_digits=16,
        decimal_places=8,
        read_only=True,
        help_text=(
            "What its tokens cost by the configured price table (a decimal string); 0 "
            "for a cache hit or a dedup follower, and for unpriced models."
        ),
    )
    price_version = serializers.CharField(
        read_only=True, help_text="The price table the cost was computed with."
    )
    finish_reason = serializers.CharField(
        read_only=True,
        help_text=(
            "Why it ended: stop, length (cut at max_tokens), cancelled, error, expired "
            "(or what an upstream said); empty while it runs."
        ),
    )
    timings = serializers.DictField(child=serializers.FloatField(), read_only=True)
    passages = serializers.JSONField(read_only=True)
    messages = serializers.JSONField(read_only=True)
    config_hash = serializers.CharField(read_only=True)
    skipped_stages = serializers.ListField(child=serializers.CharField(), read_only=True)
    cache_status = serializers.ChoiceField(
        choices=CacheStatus.choices,
        read_only=True,
        allow_blank=True,
        help_text="What the response cache did (empty until the worker decided).",
    )
    cache_source = serializers.UUIDField(
        read_only=True,
        allow_null=True,
        help_text="The request a hit's or a collapsed request's answer came from.",
    )
    cache_key = serializers.CharField(
        read_only=True, allow_null=True, help_text="The request's cache key (hex SHA-256)."
    )

    def to_representation(self, instance: InferenceRequest) -> dict[str, Any]:
        """The fields above, without DRF deep-copying all of them for every
        instance: that copy was half of a status or result call's CPU in the
        view. tests/test_api_status_result.py pins it to DRF's own rendering."""
        request, when = instance, _DATETIME.to_representation
        return {
            "request_id": str(request.pk),
            "session_id": request.session_id,
            "status": request.status,
            "result": request.result,
            "error": request.error,
            "error_code": request.error_code,
            "metadata": request.metadata,
            "priority": request.priority,
            "priority_requested": request.priority_requested,
            "backend": request.backend,
            "backend_used": request.backend_used,
            "params": request.params,
            "attempt": request.attempt,
            "created_at": when(request.created_at),
            "started_at": when(request.started_at) if request.started_at else None,
            "finished_at": when(request.finished_at) if request.finished_at else None,
            "deadline_at": when(request.deadline_at) if request.deadline_at else None,
            "usage": request.usage,
            "model_used": request.model_used,
            "cost": _COST.to_representation(request.cost),
            "price_version": request.price_version,
            "finish_reason": request.finish_reason,
            "timings": {stage: float(seconds) for stage, seconds in request.timings.items()},
            "passages": request.passages,
            "messages": request.messages,
            "config_hash": request.config_hash,
            "skipped_stages": [str(stage) for stage in request.skipped_stages],
            **request.cache_report,
            "cache_key": request.cache_key,
        }


# Stateless when only rendering: one instance serves every call.
_DATETIME = serializers.DateTimeField()
_COST = serializers.DecimalField(max_digits=16, decimal_places=8)


class StreamableRequestSerializer(InferenceRequestSerializer):
    """A request plus the token that opens its SSE stream without a header
    (``GET /api/v1/stream/<id>?token=...``, for browsers' EventSource)."""

    stream_token = serializers.SerializerMethodField()

    def get_stream_token(self, request: InferenceRequest) -> str:
        return stream_token(request)

    def to_representation(self, instance: InferenceRequest) -> dict[str, Any]:
        return {**super().to_representation(instance), "stream_token": stream_token(instance)}


class BatchAcceptedSerializer(serializers.Serializer):
    """A batch's 202: its requests, in the order they were sent."""

    requests = StreamableRequestSerializer(many=True)


class StatusSerializer(StreamableRequestSerializer):
    """``GET /api/v1/status/<id>``: the record, and while it waits its place in the queue."""

    queue_position = serializers.IntegerField(
        allow_null=True,
        read_only=True,
        help_text="While pending: 1 = the next a worker claims (null otherwise).",
    )

    def to_representation(self, instance: InferenceRequest) -> dict[str, Any]:
        """``context["queue_position"]``: counted by the view (a query)."""
        body = super().to_representation(instance)
        return {**body, "queue_position": self.context.get("queue_position")}


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    code = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    reset_at = serializers.DateTimeField(
        required=False, help_text="budget_exceeded: when the key's budget starts over."
    )


class ErrorSerializer(serializers.Serializer):
    """The one error shape of every endpoint."""

    error = ErrorDetailSerializer()


class ConfigKeySerializer(serializers.Serializer):
    key = serializers.CharField()
    setting = serializers.CharField()
    value = serializers.JSONField()
    source = serializers.ChoiceField(  # type: ignore[assignment]
        choices=["default", "file", "env", "secret", "runtime"]
    )
    reload = serializers.BooleanField()


class ConfigSerializer(serializers.Serializer):
    """The configuration in effect in the answering process (secrets redacted)."""

    hash = serializers.CharField()
    file = serializers.CharField()
    keys = ConfigKeySerializer(many=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "unhealthy"])
    checks = serializers.DictField(child=serializers.CharField())
    worker_mode = serializers.CharField()
    version = serializers.CharField()


class DocumentSerializer(KnownFieldsOnly, serializers.ModelSerializer):
    """A document in the store; ``chunks`` is how many pieces it was split into."""

    title = StrictCharField(max_length=300)
    text = StrictCharField(write_only=True, trim_whitespace=False)
    source = StrictCharField(max_length=500, required=False)  # type: ignore[assignment]
    chunks = serializers.IntegerField(source="chunks.count", read_only=True)

    class Meta:
        model = Document
        fields = ["id", "title", "source", "text", "chunks", "created_at"]
        read_only_fields = ["id", "chunks", "created_at"]
        # ``source`` may repeat: ingesting it again replaces the document.
        extra_kwargs: dict[str, dict[str, Any]] = {"source": {"validators": []}}


class DocumentDetailSerializer(DocumentSerializer):
    # As stored: no input rules in its schema.
    text = serializers.CharField(read_only=True)  # type: ignore[assignment]


class SessionTurnSerializer(serializers.ModelSerializer):
    """A turn as the chat page restores it: everything it shows, in one call."""

    request_id = serializers.UUIDField(source="id", read_only=True)

    class Meta:
        model = InferenceRequest
        fields = [
            "request_id",
            "prompt",
            "result",
            "status",
            "error",
            "error_code",
            "finish_reason",
            "passages",
            "metadata",
            "params",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class SessionSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    title = serializers.CharField(help_text="Its renamed title, else its first prompt, cut.")
    turns = SessionTurnSerializer(many=True)


class SessionSummarySerializer(serializers.Serializer):
    """A conversation in the list: its requests sharing a ``session_id``."""

    session_id = serializers.CharField()
    title = serializers.CharField(help_text="Its renamed title, else its first prompt, cut.")
    turns = serializers.IntegerField(help_text="How many requests it has.")
    last_activity = serializers.DateTimeField(help_text="When its latest request was made.")
    started_at = serializers.DateTimeField(help_text="When its first request was made.")


class SessionPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next page (null: the last).")
    results = SessionSummarySerializer(many=True)


@extend_schema_field({"type": "string", "description": "The next page's cursor (from next)."})
class SessionCursorField(serializers.Field):
    """The (last_activity, session_id) a page ends at, opaque to clients."""

    default_error_messages = {"invalid": "Invalid cursor."}

    @staticmethod
    def encode(after: tuple[datetime, str]) -> str:
        raw = json.dumps([after[0].isoformat(), after[1]]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def to_internal_value(self, data: Any) -> tuple[datetime, str]:
        try:
            at, session_id = json.loads(base64.urlsafe_b64decode(f"{data}{'=' * (-len(data) % 4)}"))
            when = parse_datetime(at)
        except (TypeError, ValueError):
            self.fail("invalid")
        if when is None or not isinstance(session_id, str):
            self.fail("invalid")
        return when, session_id

    def to_representation(self, value: tuple[datetime, str]) -> str:
        return self.encode(value)


class SessionListQuerySerializer(KnownFieldsOnly):
    """``GET /api/v1/sessions/``'s query."""

    unknown_what = "query parameter"

    cursor = SessionCursorField(required=False)
    page_size = serializers.IntegerField(required=False, default=50, min_value=1, max_value=200)


class SessionRenameSerializer(KnownFieldsOnly):
    """``PATCH /api/v1/sessions/<id>``: empty or null goes back to the first prompt;
    no title changes nothing."""

    title = StrictCharField(max_length=200, allow_blank=True, allow_null=True, required=False)


EXPORT_FORMATS = {"json": "json", "markdown": "markdown", "md": "markdown"}


class SessionExportQuerySerializer(KnownFieldsOnly):
    unknown_what = "query parameter"

    format = serializers.ChoiceField(
        choices=list(EXPORT_FORMATS), required=False, default="json", help_text="md = markdown."
    )


class SessionExportTurnSerializer(serializers.ModelSerializer):
    request_id = serializers.UUIDField(source="id", read_only=True)

    class Meta:
        model = InferenceRequest
        fields = [
            "request_id",
            "prompt",
            "result",
            "status",
            "finish_reason",
            "error",
            "error_code",
            "backend",
            "model_used",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class SessionExportSerializer(serializers.Serializer):
    session_id = serializers.CharField()
    title = serializers.CharField()
    exported_at = serializers.DateTimeField()
    turns = SessionExportTurnSerializer(many=True)


def session_markdown(export: Mapping[str, Any]) -> str:
    """A readable transcript of a serialized export (SessionExportSerializer)."""
    lines = [
        f"# {export['title']}",
        "",
        f"Session `{export['session_id']}` · {len(export['turns'])} turns · "
        f"exported {export['exported_at']}",
    ]
    for turn in export["turns"]:
        lines += ["", "---", "", f"**You** · {turn['created_at']}", "", turn["prompt"], ""]
        by = turn["model_used"] or turn["backend"] or "assistant"
        lines += [f"**Assistant** ({by}) · {turn['status']}", ""]
        if turn["result"]:
            lines += [turn["result"], ""]
        if turn["error"]:
            lines += [f"> Error ({turn['error_code'] or turn['status']}): {turn['error']}", ""]
        elif turn["finish_reason"] and turn["finish_reason"] != "stop":
            lines += [f"> Finished: {turn['finish_reason']}", ""]
    return "\n".join(lines).rstrip() + "\n"
