"""A worker process's HTTP port: Prometheus ``/metrics``, and ``/healthz`` for a
liveness probe (an exec probe would pay Django's start-up on every probe).

``/healthz`` answers 503 once the engine's heartbeat is older than three poll
intervals: its event loop is blocked, or the engine stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds is not news


def status_app(alive: Callable[[], bool]) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        healthy = alive()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [b"ok\n" if healthy else b"the worker loop stopped beating\n"]

    return app


def serve_status(port: int, addr: str, alive: Callable[[], bool]) -> ThreadingWSGIServer:
    """Serve ``/metrics`` and ``/healthz`` from a daemon thread."""
    server = make_server(addr, port, status_app(alive), ThreadingWSGIServer, QuietHandler)
    threading.Thread(target=server.serve_forever, name="status-port", daemon=True).start()
    return server
