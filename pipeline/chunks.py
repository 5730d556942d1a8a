"""Persist streamed tokens as numbered chunk rows, in batches, then ring readers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async

from inference import events
from inference.models import InferenceRequest

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The attempt no longer holds its request (reclaimed, cancelled, expired)."""


# After a fenced write found the writer's request no longer held: move the writer
# to the request that took its generation over (a dedup leader cancelled with
# followers); False if there is none.
Successor = Callable[["ChunkWriter"], Awaitable[bool]]


async def _no_successor(writer: ChunkWriter) -> bool:
    return False


class ChunkWriter:
    """A TokenSink that writes a batch every ``max_tokens`` tokens or ``max_delay`` s.

    Each batch is one fenced transaction (see ``InferenceRequest.append_chunks``)
    followed by one group event per request written, never one write or event
    per token. The first token is written at once: time to first token is what a
    reader feels, and holding it for the batch window added up to ``max_delay``
    to it (bench c). ``request`` is the row the attempt writes for: it changes
    when a hand-over makes a follower the leader (``successor``).
    """

    def __init__(
        self,
        request: InferenceRequest,
        max_tokens: int,
        max_delay: float,
        successor: Successor = _no_successor,
    ):
        self.request = request
        self.max_tokens = max_tokens
        self.max_delay = max_delay
        self.successor = successor
        self.mirror = False
        self.dedup_key: str | None = None
        self.next_seq = 0
        self._buffer: list[str] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._first_buffered_at = 0.0
        self._finished = False  # finish(): the buffer belongs to the completion

    async def write(self, text: str) -> None:
        if not self._buffer:
            self._first_buffered_at = time.monotonic()
        self._buffer.append(text)
        first_token = self.next_seq == 0 and len(self._buffer) == 1
        if first_token or len(self._buffer) >= self.max_tokens:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def close(self) -> None:
        await self.flush()
        if self._timer is not None:
            self._timer.cancel()

    async def finish(self) -> None:
        """No more tokens: the buffer is kept for the completion, which commits it
        with the request's end (``tail``); no flush writes it any more."""
        async with self._lock:  # a flush under way completes first
            self._finished = True
        if self._timer is not None:
            self._timer.cancel()

    def tail(self) -> tuple[int, list[str]]:
        return self.next_seq, list(self._buffer)

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer or self._finished:
                return
            # Tokens written during the await land after this prefix; a failed
            # write leaves the buffer intact for the next flush.
            texts = list(self._buffer)
            written = await self._append(texts)
            del self._buffer[: len(texts)]
            self.next_seq += len(texts)
        for request_id, attempt in written:
            await events.notify_chunks(request_id, attempt, self.next_seq - 1)

    async def _append(self, texts: list[str]) -> list[tuple[uuid.UUID, int]]:
        while True:
            append = database_sync_to_async(self.request.append_chunks)
            written = await append(self.next_seq, texts, self.mirror)
            if written is not None:
                return written
            if not await self.successor(self):
                raise LeaseLost(str(self.request.pk))

    def share_with_followers(self, dedup_key: str | None) -> None:
        self.mirror = True
        self.dedup_key = dedup_key

    async def _flush_later(self) -> None:
        """Bound the latency of a slow trickle of tokens to ``max_delay``."""
        try:
            delay = self.max_delay - (time.monotonic() - self._first_buffered_at)
            await asyncio.sleep(max(delay, 0))
            self._timer = None
            await self.flush()
        except Exception:
            # The attempt's next write, its close() or its heartbeat will notice.
            logger.warning("deferred chunk flush failed", exc_info=True)
