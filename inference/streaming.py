"""Follow one request's stream: every chunk once, in order, then its end.

Readers (SSE, WebSocket, long-poll, ``manage.py infer``) join the request's
group *first*, then read chunks from the database, so an event published while
they read cannot slip past them. Group events are only wake-ups: a lost one
delays a reader by at most ``ORCHESTRATOR_STREAM_POLL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from inference import events
from inference.models import TERMINAL_STATUSES, InferenceRequest, StreamChunk

logger = logging.getLogger(__name__)

# How often a reader re-reads the database while the channel layer is down.
LAYER_DOWN_POLL_SECONDS = 0.5
# channels_redis's layer keeps, per channel, the messages that arrive for a channel
# nobody receives on any more, and never drops them (django/channels_redis#212,
# #384): a group event sent just as its reader left — about 0.8 KB per stream, 8 MB
# per 10,000 (bench e). Readers' channels are used once, so what is buffered for a
# channel no reader holds is swept, at most this often.
SWEEP_SECONDS = 1.0
_live_channels: set[str] = set()
_swept_at = [0.0]


@dataclass(frozen=True)
class Token:
    seq: int
    text: str
    # Another event of the same read follows at once (a token, or the end): a
    # writer may hold this one's bytes and send them together, one write, not many.
    more: bool = False


@dataclass(frozen=True)
class Reset:
    """A new attempt started: drop what was received and start again from 0."""

    attempt: int


@dataclass(frozen=True)
class Finished:
    request: InferenceRequest


@dataclass(frozen=True)
class Idle:
    """Nothing happened for a poll interval (SSE sends a keepalive)."""


StreamEvent = Token | Reset | Finished | Idle


@dataclass(frozen=True)
class _Snapshot:
    attempt: int
    chunks: list[tuple[int, str]]  # (seq, text)
    finished: InferenceRequest | None  # the whole row, once it is terminal


def _read(request_id: uuid.UUID, after_seq: int) -> _Snapshot:
    """The attempt, its chunks after ``after_seq``, and the row if it is terminal:
    while it runs, a reader wakes per chunk batch and needs only its status."""
    status, attempt = InferenceRequest.objects.values_list("status", "attempt").get(pk=request_id)
    finished = None
    if status in TERMINAL_STATUSES:
        finished = InferenceRequest.objects.get(pk=request_id)
        attempt = finished.attempt
    chunks = StreamChunk.objects.filter(request_id=request_id, attempt=attempt, seq__gt=after_seq)
    return _Snapshot(attempt, list(chunks.order_by("seq").values_list("seq", "text")), finished)


@contextlib.asynccontextmanager
async def _subscription(request_id: uuid.UUID) -> AsyncIterator[str | None]:
    """A channel in the request's group; None while the layer is unreachable
    (the reader then polls the database, which stays correct, just slower)."""
    layer = get_channel_layer()
    group = events.request_group(request_id)
    try:
        channel = await layer.new_channel("stream")
        _live_channels.add(channel)
        await layer.group_add(group, channel)
    except Exception:
        logger.warning("channel layer unavailable: %s polls", request_id, exc_info=True)
        channel = None
    try:
        yield channel
    finally:
        if channel is not None:
            _live_channels.discard(channel)
            with contextlib.suppress(Exception):
                await layer.group_discard(group, channel)
            _sweep_late_events(layer)


def _sweep_late_events(layer: Any) -> None:
    """Drop what the layer buffered for readers' channels no reader holds."""
    buffer = getattr(layer, "receive_buffer", None)  # (channels_redis's core layer)
    now = time.monotonic()
    if not isinstance(buffer, dict) or now - _swept_at[0] < SWEEP_SECONDS:
        return
    _swept_at[0] = now
    for name in [n for n in buffer if n.startswith("stream.") and n not in _live_channels]:
        del buffer[name]


async def _wait_for_event(channel: str | None, timeout: float) -> dict[str, Any] | None:
    """The wake-up that arrived, or None on timeout (or while the layer is down)."""
    if channel is None:
        await asyncio.sleep(min(timeout, LAYER_DOWN_POLL_SECONDS))
        return None
    try:
        message: dict[str, Any] = await asyncio.wait_for(
            get_channel_layer().receive(channel), timeout
        )
    except TimeoutError:
        return None
    except Exception:
        logger.warning("channel layer receive failed; polling", exc_info=True)
        await asyncio.sleep(min(timeout, LAYER_DOWN_POLL_SECONDS))
        return None
    return message


async def follow(
    request_id: uuid.UUID, after_seq: int = -1, attempt: int | None = None
) -> AsyncIterator[StreamEvent]:
    """Yield the request's tokens after ``after_seq``, live, then ``Finished``.

    ``attempt`` is the attempt the caller's ``after_seq`` belongs to; if the
    request has moved on, the reader gets ``Reset`` and every token again.
    Raises ``InferenceRequest.DoesNotExist`` for an unknown id.
    """
    read = database_sync_to_async(_read)
    poll = settings.ORCHESTRATOR_STREAM_POLL_SECONDS
    async with _subscription(request_id) as channel:
        while True:
            snap = await read(request_id, after_seq)
            if attempt is not None and snap.attempt != attempt and after_seq >= 0:
                yield Reset(snap.attempt)
                after_seq = -1
                snap = await read(request_id, after_seq)
            attempt = snap.attempt
            last = len(snap.chunks) - 1
            for index, (seq, text) in enumerate(snap.chunks):
                yield Token(seq, text, more=index < last or snap.finished is not None)
                after_seq = seq
            # The row is read before its chunks, and a worker writes every chunk
            # before (or with) the terminal status: a terminal row means we have them all.
            if snap.finished is not None:
                yield Finished(snap.finished)
                return
            if await _wait_for_event(channel, poll) is None:
                yield Idle()


async def wait_until_finished(
    request_id: uuid.UUID,
    timeout: float,
    read: Callable[..., Awaitable[InferenceRequest]] | None = None,
) -> InferenceRequest:
    """The request once terminal, or as it is when ``timeout`` runs out.

    Only the finish wakes a waiter: chunk events are skipped without reading
    the row (a long-poll used to cost a read per chunk batch, more than the
    stream it waited on). ``read`` loads the row: by default ``aget``, which
    runs on a view's own thread and connection; consumers pass one wrapped in
    ``database_sync_to_async``.
    """
    read = read or InferenceRequest.objects.aget
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    poll = settings.ORCHESTRATOR_STREAM_POLL_SECONDS
    async with _subscription(request_id) as channel:
        request = await read(pk=request_id)
        while not request.is_terminal:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            message = await _wait_for_event(channel, min(remaining, poll))
            if message is None or message.get("type") == events.REQUEST_FINISHED:
                request = await read(pk=request_id)
        return request
