"""The Channels background-worker consumer on the ``pipeline`` channel."""

from __future__ import annotations

from typing import Any

from channels.consumer import AsyncConsumer

from pipeline.worker import current_engine


class PipelineConsumer(AsyncConsumer):
    """Turns doorbell messages into a wake-up of this process's engine.

    It does no work itself: the engine claims from the database, so a doorbell
    delivered to a busy or dying worker loses nothing.
    """

    async def request_submitted(self, message: dict[str, Any]) -> None:
        engine = current_engine()
        if engine is not None:
            engine.notify_work()
