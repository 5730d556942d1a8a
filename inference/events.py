"""Channel-layer names and the events the engine and the web edge exchange.

The channel layer is only a doorbell (DESIGN §4): every event here is a hint to
re-read the database, and losing one delays work but never loses it. So every
publish swallows layer errors after logging them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

# Message types (Channels maps "a.b" to handler method "a_b").
REQUEST_SUBMITTED = "request.submitted"
STREAM_CHUNKS = "stream.chunks"
REQUEST_FINISHED = "request.finished"
REQUEST_CANCEL = "request.cancel"
REQUEST_HANDED_OVER = "request.handed_over"
FLAGS_CHANGED = "flags.changed"
FLAGS_GROUP = "orchestrator.flags"


def request_group(request_id: uuid.UUID | str) -> str:
    """The group stream readers of one request join."""
    return f"request.{uuid.UUID(str(request_id)).hex}"


async def _publish(kind: str, target: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        if kind == "send":
            await layer.send(target, message)
        else:
            await layer.group_send(target, message)
    except Exception:  # the doorbell is best effort by design
        logger.warning("channel layer %s to %s failed", kind, target, exc_info=True)


async def ring_doorbell(request_id: uuid.UUID | None = None) -> None:
    """Tell some worker that a pending request (or several) is waiting."""
    await _publish(
        "send",
        settings.PIPELINE_CHANNEL,
        {"type": REQUEST_SUBMITTED, "request_id": str(request_id or "")},
    )


class CoalescingDoorbell:
    """At most one ring per ``window`` seconds from this process, and always one
    after the last request: a burst of submits rings once at its start and once
    at its end. A woken worker claims until the queue is empty, so one ring per
    burst is enough; a ring per submit cost the web process a sixth of its CPU
    under load (bench a)."""

    def __init__(self, window: float = 0.005) -> None:
        self.window = window
        self.last_rung = -1e9
        self.trailing: asyncio.Task[None] | None = None

    async def ring(self) -> None:
        now = time.monotonic()
        if now - self.last_rung >= self.window:
            self.last_rung = now
            await ring_doorbell()
        elif self.trailing is None:
            self.trailing = asyncio.create_task(self._ring_later(self.last_rung + self.window))

    async def _ring_later(self, when: float) -> None:
        await asyncio.sleep(max(when - time.monotonic(), 0))
        self.trailing = None
        self.last_rung = time.monotonic()
        await ring_doorbell()


submitted = CoalescingDoorbell()


def reset() -> None:
    """A fresh doorbell (its timer belongs to one event loop)."""
    global submitted
    submitted = CoalescingDoorbell()


async def notify_chunks(request_id: uuid.UUID, attempt: int, last_seq: int) -> None:
    await _publish(
        "group",
        request_group(request_id),
        {
            "type": STREAM_CHUNKS,
            "request_id": str(request_id),
            "attempt": attempt,
            "last_seq": last_seq,
        },
    )


async def notify_finished(request_id: uuid.UUID, status: str) -> None:
    await _publish(
        "group",
        request_group(request_id),
        {"type": REQUEST_FINISHED, "request_id": str(request_id), "status": status},
    )


async def join_flag_announcements(channel: str) -> None:
    """Hear ``FLAGS_CHANGED`` on ``channel`` (best effort: the layer may be down)."""
    layer = get_channel_layer()
    try:
        await layer.group_add(FLAGS_GROUP, channel)
    except Exception:
        logger.warning("cannot join %s; flags refresh on their own", FLAGS_GROUP, exc_info=True)


async def announce_flags_changed() -> None:
    """Tell every listening process to re-read the feature flags now."""
    await _publish("group", FLAGS_GROUP, {"type": FLAGS_CHANGED})


async def tell_worker_to_cancel(worker_channel: str, request_id: uuid.UUID) -> None:
    """Ask the worker holding a request to stop generating it now."""
    if worker_channel:
        await _publish(
            "send", worker_channel, {"type": REQUEST_CANCEL, "request_id": str(request_id)}
        )


async def tell_worker_of_hand_over(
    worker_channel: str, request_id: uuid.UUID, successor_id: uuid.UUID
) -> None:
    """Tell the worker generating a cancelled dedup leader that it now generates
    for ``successor_id`` (so a cancel of that one reaches it at once; best effort:
    its next fenced write finds out anyway)."""
    if worker_channel:
        message = {
            "type": REQUEST_HANDED_OVER,
            "request_id": str(request_id),
            "successor_id": str(successor_id),
        }
        await _publish("send", worker_channel, message)
