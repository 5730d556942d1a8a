"""What flows through the pipeline: a request snapshot and each stage's output."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from inference.models import CacheStatus, InferenceRequest
from pipeline.backends.base import GenerationParams, Usage


class TokenSink(Protocol):
    """Where the Inference stage puts text deltas as they arrive."""

    async def write(self, text: str) -> None: ...

    async def close(self) -> None:
        """Write what is buffered now (an attempt ending in failure)."""

    async def finish(self) -> None:
        """No more tokens: what is buffered goes with the completion (``tail``)."""

    def tail(self) -> tuple[int, list[str]]:
        """The tokens not yet written: (their first seq, their texts)."""

    def share_with_followers(self, dedup_key: str | None) -> None:
        """Identical requests may follow this one (in-flight dedup): write for them
        too. ``dedup_key``: the key it leads under, if it won the leadership."""


@dataclass(frozen=True)
class RequestSnapshot:
    """The fields of the request row the stages need, read once at claim."""

    id: uuid.UUID
    attempt: int
    prompt: str
    session_id: str
    backend: str
    params: GenerationParams
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    api_key_id: str | None = None  # the owner: session history is per key...
    owner_id: int | None = None  # ...or per signed-in account
    rag: dict[str, Any] = field(default_factory=dict)
    system: str = ""  # the request's own system prompt ("": the configured one)
    conversation: list[dict[str, str]] = field(default_factory=list)
    # For the response cache: the client's directives, whether the answer is
    # sampled (temperature not sent as 0), and whether dedup gave up on it.
    cache_control: dict[str, Any] = field(default_factory=dict)
    sampled: bool = True
    detached: bool = False

    @classmethod
    def from_request(cls, request: InferenceRequest) -> RequestSnapshot:
        return cls(
            id=request.pk,
            attempt=request.attempt,
            prompt=request.prompt,
            session_id=request.session_id,
            backend=request.backend,
            metadata=request.metadata,
            created_at=request.created_at,
            api_key_id=request.api_key_id,
            owner_id=request.owner_id,
            rag=request.params.get("rag") or {},
            system=request.params.get("system") or "",
            params=replace(GenerationParams.from_params(request.params), priority=request.priority),
            conversation=request.conversation,
            cache_control=request.cache_control,
            sampled=request.params.get("temperature") != 0,
            detached=request.cache_status == CacheStatus.DETACHED,
        )


@dataclass
class PipelineContext:
    request: RequestSnapshot
    sink: TokenSink
    passages: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    output: str = ""
    result: str = ""
    usage: Usage = field(default_factory=Usage)
    backend_used: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # stages a flag turned off
    started: float = field(default_factory=time.monotonic)
    # The response cache and dedup (CacheStage): the request's key, what was
    # decided, how long a stored answer would serve (None: not to be stored),
    # and what answers the request instead of generating: a stored answer, or
    # the identical request it now follows.
    cache_key: str | None = None
    cache_status: str = ""
    cache_ttl: float | None = None
    served_by: InferenceRequest | None = None
    following: uuid.UUID | None = None

    @property
    def answered(self) -> bool:
        """Answered without generating: the remaining stages do not run."""
        return self.served_by is not None or self.following is not None

    def mark(self, event: str) -> None:
        """Record seconds since the attempt started (e.g. "first_token")."""
        self.timings[event] = round(time.monotonic() - self.started, 6)
