"""Shared fixtures. The default suite runs in embedded mode: SQLite + in-memory layer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from harness.fake_llm_server import FakeLLMServer
from harness.processes import embedded_env, run_manage, serving
from inference import services
from inference.models import InferenceRequest
from inference.serializers import REQUEST_PARAMS
from inference.streaming import Finished, Token, follow, wait_until_finished
from orchestrator_site import state
from pipeline.host import PipelineHost
from pipeline.worker import Engine, EngineConfig

TEST_BACKENDS = {
    "echo": {"class": "pipeline.backends.echo.EchoBackend", "options": {}},
    "slow-echo": {
        "class": "pipeline.backends.echo.EchoBackend",
        "options": {"token_delay": 0.02},
    },
    "failing": {"class": "tests.backends.FailingBackend", "options": {"tokens_before": 0}},
    "failing-midway": {
        "class": "tests.backends.FailingBackend",
        "options": {"tokens_before": 3},
    },
    "exploding": {"class": "tests.backends.ExplodingBackend", "options": {}},
    "endless": {"class": "tests.backends.EndlessBackend", "options": {}},
    "local": {"class": "pipeline.backends.llama_cpp.LlamaCppBackend", "options": {"seed": 42}},
}


@pytest.fixture(autouse=True)
def fast_profile(settings) -> None:  # type: ignore[no-untyped-def]
    """Short leases and intervals so recovery paths run in test time."""
    settings.ORCHESTRATOR_POLL_INTERVAL_SECONDS = 0.2
    settings.ORCHESTRATOR_REAP_INTERVAL_SECONDS = 0.2
    settings.ORCHESTRATOR_LEASE_SECONDS = 3.0
    settings.ORCHESTRATOR_STREAM_POLL_SECONDS = 0.5
    settings.ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS = 2.0
    settings.ORCHESTRATOR_BACKENDS = TEST_BACKENDS
    settings.ORCHESTRATOR_DEFAULT_BACKEND = "echo"
    settings.ORCHESTRATOR_BACKEND_BACKOFF_BASE_SECONDS = 0.01
    # Tests of other things submit in bursts from one address: no rate limits
    # unless a test sets them (tests/test_rate_limits.py).
    settings.ORCHESTRATOR_REQUESTS_PER_MINUTE = 0
    settings.ORCHESTRATOR_MAX_IN_FLIGHT = 0
    settings.ORCHESTRATOR_MAX_STREAMS = 0
    settings.ORCHESTRATOR_WS_MESSAGES_PER_SECOND = 0
    settings.ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE = 0
    settings.ORCHESTRATOR_PENDING_COUNT_SECONDS = 0  # admission tests count exactly


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    """In-memory layers are bound to one event loop; backends to one settings."""

    def reset() -> None:
        state.reset()
        cache.clear()

    reset()
    yield
    reset()


STAFF_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def live_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make run`'s server as a process (embedded mode), echo paced at 50 ms/token."""
    data_dir = tmp_path_factory.mktemp("live-server")
    env = embedded_env(
        data_dir,
        ORCHESTRATOR_ECHO_TOKEN_DELAY="0.05",
        ORCHESTRATOR_CHUNK_BATCH_TOKENS="4",
        ORCHESTRATOR_DASHBOARD_INTERVAL_SECONDS="0.5",
    )
    run_manage("migrate", "--noinput", "-v0", env=env)
    run_manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        f"User.objects.create_superuser('staff', 'staff@example.com', {STAFF_PASSWORD!r})",
        env=env,
    )
    log = data_dir / "server.log"
    with serving(env, log, "runserver", "--noreload") as url:
        yield url


@pytest.fixture
async def engine(transactional_db) -> AsyncIterator[Engine]:  # type: ignore[no-untyped-def]
    """A running engine (plus its doorbell listener) in the test's event loop."""
    host = PipelineHost(EngineConfig.from_settings())
    host.start()
    while not host.engine.control_channel:
        await asyncio.sleep(0)
    yield host.engine
    await host.stop(grace=0)


def submit(prompt: str = "hello world", **fields) -> InferenceRequest:  # type: ignore[no-untyped-def]
    """Submit as the API would; generation fields go into ``params``."""
    params = {key: fields.pop(key) for key in REQUEST_PARAMS if key in fields}
    params.update(fields.pop("params", {}))
    submission = services.Submission(prompt=prompt, params=params, **fields)
    request, _ = services.submit_request(submission)
    return request


def start_of_a_fresh_window(margin: float = 15) -> None:
    """Per-minute limits count in windows of the clock's minutes: a test that
    counts calls against one must not straddle two."""
    if time.time() % 60 > 60 - margin:
        time.sleep(60 - time.time() % 60 + 0.1)


async def asubmit(prompt: str = "hello world", **fields) -> InferenceRequest:  # type: ignore[no-untyped-def]
    return await database_sync_to_async(submit)(prompt, **fields)


async def finished(request_id: uuid.UUID, timeout: float = 10.0) -> InferenceRequest:
    """The request once terminal; fails the test if it is not within ``timeout``."""
    request = await wait_until_finished(request_id, timeout)
    assert request.is_terminal, f"request still {request.status} after {timeout}s"
    return request


@pytest.fixture
async def upstream(settings) -> AsyncIterator[FakeLLMServer]:  # type: ignore[no-untyped-def]
    """Backends on a fake upstream that counts its calls (for the cache and dedup):
    "upstream" answers at once, "upstream-slow" a word every 50 ms, "down" fails
    (500) and falls back to "upstream"."""
    server = await FakeLLMServer().start()

    def backend(model: str, **extra: Any) -> dict[str, Any]:
        options = {"base_url": f"{server.url}/v1", "api_key": "sk-test", "model": model}
        return {
            "class": "pipeline.backends.openai_compat.OpenAICompatBackend",
            "options": options,
            **extra,
        }

    settings.ORCHESTRATOR_BACKENDS = {
        **TEST_BACKENDS,
        "upstream": backend("ok"),
        "upstream-slow": backend("slow"),
        "down": backend("500", fallback=["upstream"]),
    }
    settings.ORCHESTRATOR_DEFAULT_BACKEND = "upstream"
    settings.ORCHESTRATOR_BACKEND_RETRIES = 0
    yield server
    await server.stop()


async def tokens_of(request_id: Any) -> list[str]:
    tokens = []
    async for event in follow(request_id):
        if isinstance(event, Token):
            tokens.append(event.text)
        if isinstance(event, Finished):
            return tokens
    raise AssertionError("the stream did not finish")
