"""What flows through the pipeline: a request snapshot and each stage's output."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from inference.models import InferenceRequest
from pipeline.backends.base import GenerationParams, Usage


class TokenSink(Protocol):
    """Where the Inference stage puts text deltas as they arrive."""

    async def write(self, text: str) -> None: ...

    async def close(self) -> None: ...


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
    api_key_id: str | None = None  # the owner: session history is per key
    rag: dict[str, Any] = field(default_factory=dict)
    conversation: list[dict[str, str]] = field(default_factory=list)

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
            rag=request.params.get("rag") or {},
            params=GenerationParams.from_params(request.params),
            conversation=request.conversation,
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

    def mark(self, event: str) -> None:
        """Record seconds since the attempt started (e.g. "first_token")."""
        self.timings[event] = round(time.monotonic() - self.started, 6)
