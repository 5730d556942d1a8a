"""The response cache's and in-flight dedup's rules: who is served, and the key.

There is no separate store: a completed request whose ``cache_expires_at`` is
ahead serves identical requests (``InferenceRequest.objects.cache_entry``), and
a request generating for a key leads its identical followers
(``lead_or_follow``). "Identical" means the same key: a SHA-256 over everything
that determines the answer, computed after RAG and Assemble, so the messages in
it are the ones the model would be shown (a document ingested since, or a later
turn of a session, changes them and so the key).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings

from inference.models import CacheEpoch, CacheStatus, canonical_sha256
from pipeline.backends import get_backend
from pipeline.context import PipelineContext, RequestSnapshot

# Bump on any change to what goes into a key: old entries then simply miss.
KEY_VERSION = 1

# Every field a request may carry, and how it reaches the key. A field missing
# from both tables fails tests/test_cache_key.py: a new field must be placed
# before it can silently serve wrong answers (the peers' commonest cache bug).
IN_KEY = {
    "prompt": "the assembled messages",
    "conversation": "the assembled messages",
    "messages": "the assembled messages",
    "session_id": "the assembled messages (its earlier turns)",
    "rag": "the assembled messages (the passages retrieved)",
    "system": "the assembled messages",
    "backend": "backend, and the fingerprint of its options",
    "model": "model",
    "params": "params (every generation parameter, defaults filled in)",
    "max_tokens": "params",
    "max_completion_tokens": "params (as max_tokens)",
    "temperature": "params",
    "top_p": "params",
    "stop": "params",
    "seed": "params",
    "api_key_id": "scope (unless the operator made the cache global)",
    "owner_id": "scope (unless the operator made the cache global)",
}
NON_SEMANTIC = {
    "id": "identity",
    "attempt": "identity",
    "created_at": "identity",
    "metadata": "the client's labels; never shown to the model",
    "user": "kept in metadata",
    "stream": "how the answer is delivered",
    "stream_options": "how the answer is delivered",
    "priority": "when it runs, not what it says",
    "deadline_seconds": "when it gives up",
    "idempotency_key": "deduplicates submits, not answers",
    "type": "the WebSocket message's kind",
    "cache": "the cache directives themselves",
    "cache_control": "the cache directives themselves",
    "sampled": "decides eligibility: sampled requests have no key",
    "detached": "decides dedup only",
    # Refused at the edge unless they ask for the default.
    "n": "only 1 is accepted",
    "logprobs": "refused",
    "top_logprobs": "refused",
    "tools": "refused",
    "tool_choice": "only none is accepted",
    "functions": "refused",
    "function_call": "only none is accepted",
    "response_format": "only text is accepted",
}

# Backend options that never change an answer: credentials and runtime knobs.
# Anything else (a URL, a model file, a context size) is in the fingerprint.
NOT_OUTPUT_OPTIONS = frozenset(
    {"api_key", "models", "concurrency", "n_threads", "token_delay", "failure_rate"}
)


@dataclass(frozen=True)
class Policy:
    """What the cache and dedup may do for one request."""

    read: bool  # may be answered from a stored entry
    write: bool  # its answer may be stored
    coalesce: bool  # may share an identical in-flight request's call
    max_age: float | None  # the oldest entry it accepts (seconds)
    ttl: float  # how long its answer serves others
    skipped: str  # its cache_status when the cache plays no part

    @property
    def keyed(self) -> bool:
        return self.read or self.write or self.coalesce


def policy_for(request: RequestSnapshot, cache_on: bool, dedup_on: bool) -> Policy:
    """Deterministic requests only (``temperature`` sent as 0), unless the client
    says ``force``; the client's directives (``cache_control``) narrow that."""
    controls = request.cache_control
    mode = controls.get("mode", "auto")
    forced = mode == "force"
    server_mode = settings.ORCHESTRATOR_CACHE_MODE
    cacheable = (
        cache_on
        and server_mode != "off"
        and (forced or (server_mode == "auto" and not request.sampled))
    )
    fresh_only = mode in ("refresh", "bypass")
    may_share = forced or not request.sampled or settings.ORCHESTRATOR_DEDUP_SAMPLED
    ttl = min(
        controls.get("ttl") or settings.ORCHESTRATOR_CACHE_TTL_SECONDS,
        settings.ORCHESTRATOR_CACHE_MAX_TTL_SECONDS,
    )
    return Policy(
        read=cacheable and not fresh_only,
        write=cacheable and mode != "bypass",
        coalesce=dedup_on and may_share and not fresh_only and not request.detached,
        max_age=controls.get("max_age"),
        ttl=ttl,
        skipped=CacheStatus.BYPASS if mode == "bypass" else CacheStatus.INELIGIBLE,
    )


def scope_of(request: RequestSnapshot) -> str:
    if settings.ORCHESTRATOR_CACHE_SCOPE == "global":
        return "global"
    if request.owner_id is not None:
        return f"user:{request.owner_id}"
    return request.api_key_id or "anon"


def _backend_fingerprint(name: str) -> str:
    config = settings.ORCHESTRATOR_BACKENDS[name]
    options = {
        option: value
        for option, value in config.get("options", {}).items()
        if option not in NOT_OUTPUT_OPTIONS
    }
    return canonical_sha256({"class": config["class"], "options": options})


def _pipeline_fingerprint() -> str:
    """What shapes an answer around the model: the stages, the prompts, the
    post-processing."""
    return canonical_sha256(
        {
            "stages": settings.ORCHESTRATOR_STAGES,
            "system_prompt": settings.ORCHESTRATOR_SYSTEM_PROMPT,
            "rag_template": settings.ORCHESTRATOR_RAG_TEMPLATE,
            "redactions": settings.ORCHESTRATOR_REDACTIONS,
            "max_output_chars": settings.ORCHESTRATOR_MAX_OUTPUT_CHARS,
        }
    )


def key_material(ctx: PipelineContext, epoch: int) -> dict[str, Any]:
    """Everything that determines the answer of an assembled request."""
    request = ctx.request
    return {
        "v": KEY_VERSION,
        "scope": scope_of(request),
        "backend": request.backend,
        "model": request.params.model or get_backend(request.backend).model,
        "backend_fp": _backend_fingerprint(request.backend),
        "pipeline_fp": _pipeline_fingerprint(),
        "skipped": ctx.skipped,
        "messages": ctx.messages,
        "params": {
            name: value
            for name, value in asdict(request.params).items()
            if name not in NON_SEMANTIC
        },
        "epoch": epoch,
    }


def key_for(ctx: PipelineContext) -> str:
    """The request's key (reads the cache epoch: call it from a thread)."""
    return canonical_sha256(key_material(ctx, CacheEpoch.current()))
