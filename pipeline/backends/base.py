"""The interface every model backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings

from inference.models import PRIORITY_NORMAL


class BackendError(Exception):
    """A backend failed. ``retryable`` says whether trying again may help.

    ``message`` is what the caller is told; ``detail`` is what the upstream said
    (its error body, which may name its account or quota): logged and shown in
    the admin, never sent to the caller."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "backend_error",
        retryable: bool = False,
        retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.detail = detail


@dataclass
class GenerationParams:
    """Sampling options; the defaults here are the ones every request gets."""

    max_tokens: int = field(default_factory=lambda: settings.ORCHESTRATOR_DEFAULT_MAX_TOKENS)
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # An upstream model other than the backend's configured one (``/v1``'s
    # ``backend/model``); only the named backend uses it, never a fallback.
    model: str = ""
    # The request's priority (0-9, higher sooner): for an upstream that schedules
    # by it (an OpenAI-compatible backend with ``forward_priority``).
    priority: int = PRIORITY_NORMAL

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> GenerationParams:
        """From a request's stored ``params`` (the ones a client left out get the defaults)."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})


@dataclass
class Usage:
    """Filled in by the backend while it streams; final once the stream ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    # The counts are guesses (e.g. a stream cut before the upstream's own count).
    estimated: bool = False


class Backend:
    """A model: ``stream`` yields text deltas and fills ``usage`` as it goes.

    Closing the generator early (cancellation, lease loss) must stop the
    generation and release anything it holds.
    """

    model: str = ""

    def __init__(self, *, name: str) -> None:
        self.name = name

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs this model; an estimate unless a backend knows."""
        return max(1, len(text) // 4)
