"""Daphne, plus what a durable orchestrator needs at start and stop.

- At boot (not on the first request) the embedded pipeline engine starts, so
  requests queued before a restart resume at once.
- Requests are read within limits (``orchestrator_site.guards``): bounded
  headers, read deadlines, an oversized body refused before it is read.
- Oversized WebSocket messages get a 1009 close frame, not a dropped socket.
- On SIGTERM/SIGINT every WebSocket gets a 1012 "service restart" close frame
  while the reactor still runs (plain daphne drops the sockets: clients see
  1006) — the code uvicorn sends, so clients see one code whichever server runs
  — and the embedded engine hands in-flight requests back to the queue.

Used by ``manage.py runserver`` (development); ``manage.py serve`` is uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer, reactor, task

from orchestrator_site.asgi import application as embedded
from orchestrator_site.guards import GuardedHTTPFactory

logger = logging.getLogger(__name__)

# How long the reactor stays up after the close frames go out, for clients to
# answer them (a closing handshake on loopback takes about a millisecond).
CLOSE_HANDSHAKE_SECONDS = 0.5
# "The server is restarting; reconnect" (RFC 6455 registry): requests are
# durable, so a client reconnects and resumes them.
SERVICE_RESTART = 1012


class OrchestratorServer(Server):
    http_factory: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ready_callable"] = self._on_ready
        super().__init__(*args, **kwargs)

    def listen_success(self, port: Any) -> None:
        """The port is listening (before the reactor runs, so before any
        connection): hand it the guarded factory instead of daphne's own."""
        if not isinstance(self.http_factory, GuardedHTTPFactory):
            self.http_factory = GuardedHTTPFactory(self)
            self.http_factory.doStart()
        port.factory = self.http_factory
        super().listen_success(port)

    def _on_ready(self) -> None:
        # On a protocol violation (e.g. a frame over the size cap) send the close
        # frame (1009, ...) instead of autobahn's default of dropping the TCP
        # connection, which clients see as an unexplained 1006.
        self.ws_factory.setProtocolOptions(failByDrop=False)
        if embedded.enabled:
            # Called just before the reactor's loop runs: schedule, don't start.
            asyncio.get_event_loop().call_soon(embedded.ensure_started)
        reactor.addSystemEventTrigger("before", "shutdown", self._shut_down)  # type: ignore[attr-defined, arg-type]

    def _shut_down(self) -> defer.Deferred[Any]:
        sockets = [p for p in self.connections if isinstance(p, WebSocketProtocol)]
        for protocol in sockets:
            # autobahn's sendClose() refuses 1012 from an application; the
            # frame-level call sends it as a server is entitled to.
            protocol.sendCloseFrame(code=SERVICE_RESTART, reasonUtf8=b"server restarting")
        logger.info("shutting down: closed %d WebSocket(s) with 1012", len(sockets))
        delay = CLOSE_HANDSHAKE_SECONDS if sockets else 0
        waits = [task.deferLater(reactor, delay, lambda: None)]  # type: ignore[arg-type]
        if embedded.host is not None:
            # Hand in-flight requests back at once: the next start (or another
            # worker) resumes them instead of waiting for their leases to expire.
            waits.append(
                defer.Deferred.fromFuture(asyncio.ensure_future(embedded.host.stop(grace=0)))
            )
        return defer.DeferredList(waits)
