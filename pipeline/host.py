"""Hosting the engine: inside the ASGI server (embedded) or in its own process."""

from __future__ import annotations

import asyncio
import logging

from channels.layers import get_channel_layer
from channels.routing import ChannelNameRouter
from channels.worker import Worker
from django.conf import settings

from pipeline.consumers import PipelineConsumer
from pipeline.worker import LAYER_RETRY_SECONDS, Engine, EngineConfig

logger = logging.getLogger(__name__)


class PipelineHost:
    """Runs one Engine plus the Channels worker that hears the doorbell."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.engine = Engine(config or EngineConfig.from_settings())
        self._task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        listener = Worker(
            application=ChannelNameRouter({settings.PIPELINE_CHANNEL: PipelineConsumer.as_asgi()}),
            channels=[settings.PIPELINE_CHANNEL],
            channel_layer=get_channel_layer(),
        )
        doorbell = asyncio.create_task(self._listen(listener))
        try:
            await self.engine.run()
        finally:
            doorbell.cancel()
            await asyncio.gather(doorbell, return_exceptions=True)

    async def _listen(self, listener: Worker) -> None:
        """Hear the doorbell; after a layer error (Redis restarting) listen again.

        Meanwhile the engine finds work by polling, so nothing waits for this.
        """
        while True:
            try:
                await listener.arun()
            except Exception:
                logger.warning("doorbell listener failed; restarting", exc_info=True)
            await asyncio.sleep(LAYER_RETRY_SECONDS)

    def start(self) -> asyncio.Task[None]:
        """Start serving in the running event loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self.serve(), name="pipeline-host")
            self._task.add_done_callback(_log_crash)
        return self._task

    async def stop(self, grace: float | None = None) -> None:
        await self.engine.stop(grace)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("pipeline host stopped", exc_info=task.exception())


def find_embedded_pipeline(app: object) -> EmbeddedPipeline | None:
    """The EmbeddedPipeline inside wrappers such as the static-files handler."""
    for _ in range(5):
        if isinstance(app, EmbeddedPipeline):
            return app
        app = getattr(app, "application", None)
    return None


class EmbeddedPipeline:
    """ASGI wrapper that hosts the engine inside the server process.

    It starts the engine on the ASGI ``lifespan`` startup (``serve``: uvicorn)
    or, for servers without lifespan (daphne), on the first connection;
    ``manage.py runserver`` (daphne) starts it as soon as the server listens.
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
