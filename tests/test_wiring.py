"""What runs is what the configuration says: the middleware chain, the server
behind ``runserver``, the outermost ASGI layer, and the doorbell reaching the
engine with no hop in between."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands, load_command_class
from django.utils.module_loading import import_string

from inference import events
from orchestrator_site.middleware import ASGIHandler
from orchestrator_site.server import OrchestratorServer
from pipeline.host import EmbeddedPipeline, PipelineHost

ROOT = Path(__file__).resolve().parent.parent

RUNNING_MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "orchestrator_site.middleware.SecurityMiddleware",
    "orchestrator_site.middleware.SessionMiddleware",
    "orchestrator_site.middleware.CommonMiddleware",
    "orchestrator_site.middleware.CsrfViewMiddleware",
    "orchestrator_site.middleware.AuthenticationMiddleware",
    "orchestrator_site.middleware.MessageMiddleware",
    "orchestrator_site.middleware.XFrameOptionsMiddleware",
]


def dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_handler_runs_the_inline_subclass_of_each_configured_middleware() -> None:
    loaded = [type(middleware) for middleware in ASGIHandler().loaded]
    assert [dotted(cls) for cls in loaded] == RUNNING_MIDDLEWARE
    # Each is the class settings.MIDDLEWARE names (which the deploy checks read), or its subclass.
    for cls, configured in zip(loaded, settings.MIDDLEWARE, strict=True):
        assert issubclass(cls, import_string(configured))


def test_a_middleware_that_cannot_run_on_the_event_loop_is_refused(settings) -> None:  # type: ignore[no-untyped-def]
    from django.core.exceptions import ImproperlyConfigured

    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_wiring.SyncOnlyMiddleware"]
    with pytest.raises(ImproperlyConfigured, match="SyncOnlyMiddleware is not async-capable"):
        ASGIHandler()


class SyncOnlyMiddleware:
    sync_capable, async_capable = True, False

    def __init__(self, get_response) -> None:  # type: ignore[no-untyped-def]
        self.get_response = get_response


def test_runserver_is_daphne_with_the_orchestrator_server() -> None:
    assert get_commands()["runserver"] == "orchestrator_site"
    assert load_command_class("orchestrator_site", "runserver").server_cls is OrchestratorServer


def test_the_embedded_pipeline_is_the_outermost_asgi_layer() -> None:
    from orchestrator_site.asgi import application

    assert isinstance(application, EmbeddedPipeline)
    assert application.enabled == (settings.ORCHESTRATOR_WORKER_MODE == "embedded")


def test_no_application_code_uses_django_test_utilities() -> None:
    for package in ("inference", "pipeline", "orchestrator_site"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert not (node.module or "").startswith("django.test"), path


@pytest.mark.django_db(transaction=True)
async def test_the_doorbell_wakes_the_engine_itself(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_POLL_INTERVAL_SECONDS = 60  # so only a ring can wake it
    host = PipelineHost()
    host.start()
    try:
        while not host.engine.control_channel:
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # let it claim nothing and settle into waiting
        woken = asyncio.create_task(host.engine._wakeup.wait())
        await events.ring_doorbell()
        await asyncio.wait_for(woken, timeout=2)
    finally:
        await host.stop(grace=0)


@pytest.mark.django_db(transaction=True)
async def test_each_request_runs_on_a_thread_an_earlier_request_left_idle() -> None:
    """Django would start a thread (and open a database connection) per request."""
    import threading

    from channels.testing import HttpCommunicator

    from orchestrator_site.middleware import RequestThreads

    handler = ASGIHandler()
    handler.threads = RequestThreads(keep=1)
    seen = []
    for _ in range(3):
        request = HttpCommunicator(handler, "GET", "/health", headers=[(b"host", b"testserver")])
        response = await request.get_response()
        assert response["status"] in (200, 503)
        await request.wait()  # the handler finishes after the response
        executor = handler.threads.idle[0]
        seen.append(executor.submit(threading.get_ident).result())
    assert len(set(seen)) == 1 and len(handler.threads.idle) == 1
    two = [handler.threads.take(), handler.threads.take()]  # busy at once: two threads
    assert two[0] is not two[1]
    for executor in two:
        handler.threads.give_back(executor)
    assert len(handler.threads.idle) == 1  # beyond ``keep``, an idle thread ends
