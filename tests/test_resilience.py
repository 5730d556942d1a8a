"""Retries, the circuit breaker and fallback chains, through the whole pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from channels.db import database_sync_to_async

from harness.fake_llm_server import FakeLLMServer
from inference import services
from pipeline.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, backoff_seconds
from pipeline.worker import Engine
from tests.conftest import TEST_BACKENDS, asubmit, finished
from tests.test_worker import first_token


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_probes_with_growing_waits() -> None:
    clock = Clock()
    breaker = CircuitBreaker("b", threshold=3, reset_seconds=10, max_reset_seconds=25, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow() and breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 10
    assert breaker.allow() and breaker.state == HALF_OPEN  # one probe
    breaker.record_failure()
    assert breaker.state == OPEN and breaker.open_for == 20  # twice as long
    clock.now += 19
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.open_for == 25  # capped
    clock.now += 25
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker("b", threshold=2, reset_seconds=1, max_reset_seconds=1)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_backoff_honours_retry_after_and_jitters_below_the_ceiling(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKEND_BACKOFF_BASE_SECONDS = 1
    settings.ORCHESTRATOR_BACKEND_BACKOFF_MAX_SECONDS = 5
    assert backoff_seconds(0, retry_after=2.5) == 2.5
    assert backoff_seconds(0, retry_after=60) == 5
    assert all(0 <= backoff_seconds(3) <= 5 for _ in range(100))
    assert all(0 <= backoff_seconds(1) <= 2 for _ in range(100))


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def upstream(settings) -> AsyncIterator[FakeLLMServer]:  # type: ignore[no-untyped-def]
    server = await FakeLLMServer().start()

    def remote(model: str, fallback: list[str] | None = None) -> dict:
        return {
            "class": "pipeline.backends.openai_compat.OpenAICompatBackend",
            "options": {"base_url": f"{server.url}/v1", "model": model, "first_token_timeout": 2},
            "fallback": fallback or [],
        }

    settings.ORCHESTRATOR_BACKENDS = {
        **TEST_BACKENDS,
        **{
            name: remote(name)
            for name in ("ok", "429-once", "500-once", "500", "error-mid", "slow", "401")
        },
        "500-then-echo": remote("500", fallback=["echo"]),
        "error-mid-then-echo": remote("error-mid", fallback=["echo"]),
    }
    yield server
    await server.stop()


PROMPT = "one two three four five six"


@pytestmark_db
async def test_an_upstream_error_body_reaches_the_admin_not_the_caller(
    engine: Engine, upstream: FakeLLMServer, client
) -> None:  # type: ignore[no-untyped-def]
    done = await finished((await asubmit(PROMPT, backend="401")).pk)
    assert (done.status, done.error_code) == ("failed", "upstream_http_401")
    assert done.error == "401 answered HTTP 401."
    assert "org-SECRET123" in done.error_detail  # for the admin and the log
    status = await database_sync_to_async(client.get)(f"/api/v1/status/{done.pk}")
    assert "SECRET123" not in status.content.decode() and "error_detail" not in status.json()


@pytestmark_db
async def test_a_429_is_retried_after_its_retry_after(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    done = await finished((await asubmit(PROMPT, backend="429-once")).pk)
    assert (done.status, done.result, done.backend_used) == ("completed", PROMPT, "429-once")
    assert upstream.calls["429-once"] == 2


@pytestmark_db
async def test_a_500_before_the_first_token_is_retried(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    done = await finished((await asubmit(PROMPT, backend="500-once")).pk)
    assert done.status == "completed" and upstream.calls["500-once"] == 2


@pytestmark_db
async def test_retries_are_bounded(engine: Engine, upstream: FakeLLMServer, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKEND_RETRIES = 2
    done = await finished((await asubmit(PROMPT, backend="500")).pk)
    assert (done.status, done.error_code) == ("failed", "upstream_http_500")
    assert upstream.calls["500"] == 3


@pytestmark_db
async def test_an_open_breaker_fails_fast_without_calling_upstream(
    engine: Engine, upstream: FakeLLMServer, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKEND_RETRIES = 0
    settings.ORCHESTRATOR_BREAKER_FAILURES = 2
    for _ in range(2):
        assert (await finished((await asubmit(backend="500")).pk)).error_code == "upstream_http_500"
    blocked = await finished((await asubmit(backend="500")).pk)
    assert (blocked.status, blocked.error_code) == ("failed", "circuit_open")
    assert upstream.calls["500"] == 2


@pytestmark_db
async def test_a_failing_backend_falls_back_to_the_next_in_its_chain(
    engine: Engine, upstream: FakeLLMServer, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKEND_RETRIES = 1
    done = await finished((await asubmit(PROMPT, backend="500-then-echo")).pk)
    assert (done.status, done.result) == ("completed", PROMPT)
    assert (done.backend, done.backend_used) == ("500-then-echo", "echo")
    assert upstream.calls["500"] == 2


@pytestmark_db
async def test_an_error_after_tokens_fails_without_retry_or_fallback(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    done = await finished((await asubmit(PROMPT, backend="error-mid-then-echo")).pk)
    assert (done.status, done.error_code) == ("failed", "stream_interrupted")
    assert upstream.calls["error-mid"] == 1


@pytestmark_db
async def test_cancelling_closes_the_upstream_stream_within_a_second(
    engine: Engine, upstream: FakeLLMServer
) -> None:
    request = await asubmit(" ".join(["word"] * 200), backend="slow")
    await first_token(request.pk)
    cancelled_at = time.monotonic()
    await database_sync_to_async(services.cancel_request)(request.pk)
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1)
    assert upstream.disconnected_at - cancelled_at < 1
