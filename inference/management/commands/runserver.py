"""Daphne's ``runserver``, plus the embedded pipeline worker started at boot.

Without this the embedded engine would start on the first connection (daphne
has no ASGI lifespan), leaving requests queued before a restart waiting.
"""

from __future__ import annotations

import asyncio
import functools

from daphne.management.commands.runserver import Command as DaphneRunserver
from daphne.server import Server
from twisted.internet import defer, reactor

from pipeline.host import find_embedded_pipeline


class EmbeddedWorkerServer(Server):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["ready_callable"] = self._start_pipeline
        super().__init__(*args, **kwargs)

    def _start_pipeline(self) -> None:
        embedded = find_embedded_pipeline(self.application)
        if embedded is None or not embedded.enabled:
            return
        # Called just before the reactor's loop runs: schedule, don't start.
        asyncio.get_event_loop().call_soon(embedded.ensure_started)
        stop = functools.partial(self._stop_pipeline, embedded)
        reactor.addSystemEventTrigger("before", "shutdown", stop)  # type: ignore[arg-type]

    def _stop_pipeline(self, embedded):  # type: ignore[no-untyped-def]
        if embedded.host is None:
            return None
        # Hand in-flight requests back to the queue at once, so the next start
        # resumes them instead of waiting for their leases to expire.
        return defer.Deferred.fromFuture(asyncio.ensure_future(embedded.host.stop(grace=0)))


class Command(DaphneRunserver):
    server_cls = EmbeddedWorkerServer
