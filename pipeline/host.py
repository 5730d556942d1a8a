"""Hosting the engine: inside the ASGI server (embedded) or in its own process."""

from __future__ import annotations

import asyncio
import logging

from pipeline.worker import Engine, EngineConfig

logger = logging.getLogger(__name__)


class PipelineHost:
    """Runs one Engine as a task of the running event loop."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.engine = Engine(config or EngineConfig.from_settings())
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start the engine in the running event loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self.engine.run(), name="pipeline-engine")
            self._task.add_done_callback(_log_crash)
        return self._task

    async def stop(self, grace: float | None = None) -> None:
        await self.engine.stop(grace)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("pipeline engine stopped", exc_info=task.exception())


class EmbeddedPipeline:
    """ASGI wrapper that hosts the engine inside the server process.

    It starts the engine on the ASGI ``lifespan`` startup (``serve``: uvicorn)
    or, for servers without lifespan (daphne), on the first connection;
    ``manage.py runserver`` (daphne: ``orchestrator_site.server``) starts it as
    soon as the server listens.
    """

    def __init__(self, app, enabled: bool) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.enabled = enabled
        self.host: PipelineHost | None = None

    def ensure_started(self) -> None:
        if self.enabled and self.host is None:
            self.host = PipelineHost()
            self.host.start()

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        self.ensure_started()
        return await self.app(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:  # type: ignore[no-untyped-def]
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.host is not None:
                    # As under runserver: hand in-flight requests back at once, so
                    # the next start resumes them instead of the restart waiting.
                    await self.host.stop(grace=0)
                await send({"type": "lifespan.shutdown.complete"})
                return
