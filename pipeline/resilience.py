"""Retries with backoff and a circuit breaker per backend (shared by all backends).

Breakers live in the worker process (like any client-side breaker): each
process learns an upstream's health from its own calls. Their last transition
is also written to the cache so ``manage.py backends`` can show it (shared
across processes when the cache is Redis).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache

from inference import metrics

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; an upstream Retry-After wins."""
    if retry_after is not None:
        return min(retry_after, settings.ORCHESTRATOR_BACKEND_BACKOFF_MAX_SECONDS)
    ceiling = settings.ORCHESTRATOR_BACKEND_BACKOFF_BASE_SECONDS * 2**attempt
    return random.uniform(0, min(ceiling, settings.ORCHESTRATOR_BACKEND_BACKOFF_MAX_SECONDS))


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``reset_seconds`` it
    lets one probe through (half-open). A failed probe reopens it for twice as
    long (up to ``max_reset_seconds``); a success closes it."""

    name: str
    threshold: int
    reset_seconds: float
    max_reset_seconds: float
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    open_for: float = 0.0
    clock: object = field(default=time.monotonic, repr=False)

    def allow(self) -> bool:
        if self.state == OPEN and self._now() - self.opened_at >= self.open_for:
            self._move(HALF_OPEN)
            return True  # the probe
        return self.state == CLOSED

    def record_success(self) -> None:
        self.failures = 0
        if self.state != CLOSED:
            self.open_for = 0.0
            self._move(CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN:
            self._open(min(self.open_for * 2, self.max_reset_seconds))
        elif self.state == CLOSED and self.failures >= self.threshold:
            self._open(self.reset_seconds)

    def _open(self, seconds: float) -> None:
        self.opened_at = self._now()
        self.open_for = seconds
        self._move(OPEN)

    def _move(self, state: str) -> None:
        logger.warning("circuit breaker %s: %s -> %s", self.name, self.state, state)
        self.state = state
        metrics.BREAKER_STATE.labels(self.name).set({CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[state])
        cache.set(f"breaker:{self.name}", {"state": state, "since": time.time()}, None)

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]


_breakers: dict[str, CircuitBreaker] = {}


def breaker_for(name: str) -> CircuitBreaker:
    if name not in _breakers:
        _breakers[name] = CircuitBreaker(
            name=name,
            threshold=settings.ORCHESTRATOR_BREAKER_FAILURES,
            reset_seconds=settings.ORCHESTRATOR_BREAKER_RESET_SECONDS,
            max_reset_seconds=settings.ORCHESTRATOR_BREAKER_MAX_RESET_SECONDS,
        )
    return _breakers[name]


def reset_breakers() -> None:
    _breakers.clear()


def last_known_state(name: str) -> str:
    """The breaker state last recorded by any process (``closed`` if none)."""
    recorded = cache.get(f"breaker:{name}")
    return recorded["state"] if recorded else CLOSED
