"""The worker engine: claims pending requests and runs them through the stages.

One ``Engine`` per process. It is hosted either inside the ASGI server
(embedded mode) or by ``manage.py run_pipeline`` (scaled mode); the code is the
same. The database is the queue: the engine claims rows with a compare-and-set,
wakes on the ``pipeline`` channel's doorbell, and polls as a fallback because
a doorbell may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from inference import events, flags, logs, metrics
from inference.models import CacheStatus, InferenceRequest, Outcome, Status
from inference.pricing import cost_of, price_version
from pipeline.backends import BackendError, get_backend
from pipeline.chunks import ChunkWriter, LeaseLost
from pipeline.context import PipelineContext, RequestSnapshot
from pipeline.reaper import reap_once
from pipeline.stages import configured_stages, run_stages

logger = logging.getLogger(__name__)

# Most rows one claim query takes (bounded: each is a task started at once).
CLAIM_BATCH = 32

# Pause before listening again after a channel-layer error (e.g. Redis restarting).
LAYER_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class EngineConfig:
    concurrency: int
    lease_seconds: float
    poll_interval: float
    reap_interval: float
    grace_seconds: float

    @classmethod
    def from_settings(cls, concurrency: int | None = None) -> EngineConfig:
        return cls(
            concurrency=concurrency or settings.ORCHESTRATOR_CONCURRENCY,
            lease_seconds=settings.ORCHESTRATOR_LEASE_SECONDS,
            poll_interval=settings.ORCHESTRATOR_POLL_INTERVAL_SECONDS,
            reap_interval=settings.ORCHESTRATOR_REAP_INTERVAL_SECONDS,
            grace_seconds=settings.ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS,
        )


def record_timeline(request: InferenceRequest, ctx: PipelineContext) -> None:
    """Complete the row's timeline: queue wait and generation speed, beside the
    per-stage seconds and first_token the stages recorded."""
    if request.started_at:
        waited = (request.started_at - request.created_at).total_seconds()
        ctx.timings["queue_wait"] = round(waited, 6)
    if ctx.usage.completion_tokens and ctx.timings.get("inference"):
        speed = ctx.usage.completion_tokens / ctx.timings["inference"]
        ctx.timings["tokens_per_second"] = round(speed, 2)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.control_channel = ""
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._stop_reasons: dict[uuid.UUID, str] = {}
        self.beat = -math.inf  # monotonic time of the last heartbeat (``alive``)

    # --- lifecycle -----------------------------------------------------------
    async def run(self) -> None:
        """Claim and run requests until :meth:`stop`."""
        layer = get_channel_layer()
        self.control_channel = await layer.new_channel("worker")
        await events.join_flag_announcements(self.control_channel)
        logger.info("pipeline engine %s up (control %s)", self.identity, self.control_channel)
        loops = [
            asyncio.create_task(self._claim_loop()),
            asyncio.create_task(self._listen(settings.PIPELINE_CHANNEL, self._on_doorbell)),
            asyncio.create_task(self._listen(self.control_channel, self._on_control)),
            asyncio.create_task(self._reap_loop()),
            asyncio.create_task(self._beat_loop()),
        ]
        try:
            await self._stopping.wait()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let in-flight requests finish within the grace period,
        then hand the rest back to the queue so another worker resumes them."""
        grace = self.config.grace_seconds if grace is None else grace
        self._stopping.set()
        self._wakeup.set()
        tasks = list(self._running.values())
        if tasks and grace > 0:
            logger.info("waiting up to %ss for %d requests", grace, len(tasks))
            await asyncio.wait(tasks, timeout=grace)
        for request_id, _task in list(self._running.items()):
            self._interrupt(request_id, "shutdown")
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def alive(self) -> bool:
        """The engine runs and its event loop turns (for a liveness probe; safe
        to call from another thread)."""
        return time.monotonic() - self.beat < 3 * self.config.poll_interval

    async def _beat_loop(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(self.config.poll_interval)

    # --- claiming --------------------------------------------------------------
    async def _claim_loop(self) -> None:
        claim = database_sync_to_async(InferenceRequest.objects.claim_batch)
        while not self._stopping.is_set():
            slots = await self._free_slots()
            # Clear before claiming: a doorbell that rings during the claim
            # leaves the event set, so the wait below returns at once.
            self._wakeup.clear()
            try:
                config_hash = settings.ORCHESTRATOR_CONFIGURATION.hash
                requests = await claim(
                    self.control_channel, self.config.lease_seconds, slots, config_hash
                )
            except Exception:  # the database may be restarting: poll again later
                logger.warning("claim failed; retrying", exc_info=True)
                requests = []
            for _ in range(slots - len(requests)):
                self._slots.release()
            if self._stopping.is_set():  # claimed while stopping: hand them back
                for request in requests:
                    self._slots.release()
                    await database_sync_to_async(InferenceRequest.objects.release)(
                        request.pk, request.attempt
                    )
                return
            for request in requests:
                task = asyncio.create_task(self._execute(request))
                self._running[request.pk] = task
                task.add_done_callback(self._finished)
            if not requests:
                await self._wait_for_work()

    async def _free_slots(self) -> int:
        """Wait for one free slot, then take every other free one (at most
        ``CLAIM_BATCH``): one claim query fills them all."""
        await self._slots.acquire()
        taken = 1
        while taken < CLAIM_BATCH and not self._slots.locked():
            await self._slots.acquire()
            taken += 1
        return taken

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self.config.poll_interval)

    def _finished(self, task: asyncio.Task[None]) -> None:
        # Found by task: a hand-over may have moved it to another request id.
        for request_id in [pk for pk, running in self._running.items() if running is task]:
            del self._running[request_id]
            self._stop_reasons.pop(request_id, None)
        self._slots.release()

    async def _successor(self, writer: ChunkWriter) -> bool:
        """After a fenced write found the writer's request gone: whether a follower
        took its generation over (the request was a dedup leader, cancelled with
        followers waiting: ``InferenceRequest.objects.hand_over``); if so the
        writer now writes for that one."""
        if writer.dedup_key is None:
            return False
        find = database_sync_to_async(InferenceRequest.objects.successor)
        successor = await find(writer.dedup_key, self.control_channel)
        if successor is None:
            return False
        request, writer.request = writer.request, successor
        self._rekey(request.pk, successor.pk)
        logs.REQUEST_ID.set(str(successor.pk))
        logs.ATTEMPT.set(successor.attempt)
        logger.info("request %s took over the generation of %s", successor.pk, request.pk)
        return True

    def _rekey(self, request_id: uuid.UUID, successor_id: uuid.UUID) -> None:
        """The task generating ``request_id`` now answers to ``successor_id``."""
        if (task := self._running.pop(request_id, None)) is not None:
            self._running[successor_id] = task

    # --- listening: the doorbell and cancellations from the API ---------------------
    async def _listen(self, channel: str, handle: Callable[[dict[str, Any]], None]) -> None:
        """Hand each message on ``channel`` to ``handle``. While the layer is down
        (Redis restarting) nothing is lost that matters: the claim loop polls and
        heartbeats find cancelled rows; listen again shortly."""
        layer = get_channel_layer()
        while True:
            try:
                message = await layer.receive(channel)
            except Exception:
                logger.warning("channel %s unavailable; retrying", channel, exc_info=True)
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            handle(message)

    def _on_doorbell(self, message: dict[str, Any]) -> None:
        """A pending request may be waiting (the shared ``pipeline`` channel: one
        listening engine gets each ring)."""
        self._wakeup.set()

    def _on_control(self, message: dict[str, Any]) -> None:
        if message.get("type") == events.REQUEST_CANCEL:
            self._interrupt(uuid.UUID(message["request_id"]), "cancelled")
        elif message.get("type") == events.REQUEST_HANDED_OVER:
            self._rekey(uuid.UUID(message["request_id"]), uuid.UUID(message["successor_id"]))
        elif message.get("type") == events.FLAGS_CHANGED:
            flags.invalidate()

    def _interrupt(self, request_id: uuid.UUID, reason: str) -> None:
        task = self._running.get(request_id)
        if task is not None and not task.done():
            self._stop_reasons.setdefault(request_id, reason)
            task.cancel()

    # --- reaping ------------------------------------------------------------------
    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval)
            try:
                report = await database_sync_to_async(reap_once)()
            except Exception:
                logger.warning("reap failed", exc_info=True)
                continue
            if report.work_waiting:
                self._wakeup.set()
                await events.ring_doorbell()

    # --- running one request ---------------------------------------------------------
    async def _execute(self, request: InferenceRequest) -> None:
        # This task's log lines carry the request (contextvars are per task).
        logs.REQUEST_ID.set(str(request.pk))
        logs.ATTEMPT.set(request.attempt)
        writer = ChunkWriter(
            request,
            max_tokens=settings.ORCHESTRATOR_CHUNK_BATCH_TOKENS,
            max_delay=settings.ORCHESTRATOR_CHUNK_BATCH_SECONDS,
            successor=self._successor,
        )
        ctx = PipelineContext(request=RequestSnapshot.from_request(request), sink=writer)
        heartbeat = asyncio.create_task(self._heartbeat(writer))
        metrics.IN_FLIGHT.inc()
        waited = (timezone.now() - request.created_at).total_seconds()  # just claimed
        metrics.QUEUE_WAIT.labels(str(request.priority)).observe(waited)
        try:
            await self._run_attempt(writer, ctx)
        except asyncio.CancelledError:
            await self._after_interrupt(writer, ctx)
        finally:
            heartbeat.cancel()
            metrics.IN_FLIGHT.dec()

    async def _run_attempt(self, writer: ChunkWriter, ctx: PipelineContext) -> None:
        request = writer.request
        try:
            ctx = await run_stages(ctx, configured_stages())
        except LeaseLost:
            logger.info("request %s attempt %s lost its lease", request.pk, request.attempt)
            await self._record_consumption(writer, ctx)  # e.g. it expired under it
            return
        except BackendError as exc:
            # Readers see the tokens that did stream, then the error.
            with contextlib.suppress(Exception):
                await writer.close()
            logger.warning("request %s failed: %s %s", request.pk, exc.message, exc.detail)
            everyone = fails_followers_too(exc)
            await self._fail(writer, exc.code, exc.message, ctx, exc.detail, everyone)
            return
        except Exception as exc:  # never let one request take the worker down
            logger.exception("request %s failed in the pipeline", request.pk)
            await self._fail(writer, "internal_error", f"Internal error: {type(exc).__name__}", ctx)
            return
        try:
            await self._finish(writer, ctx)
        except Exception:  # e.g. the database went away: another attempt finishes it
            logger.exception("request %s could not be finished; handing it back", request.pk)
            with contextlib.suppress(Exception):
                await self._hand_back(writer)

    async def _finish(self, writer: ChunkWriter, ctx: PipelineContext) -> None:
        if ctx.following is not None:
            # Its leader's attempt generates for it and completes it: the slot is free.
            logger.info("request %s follows %s", writer.request.pk, ctx.following)
            await events.notify_chunks(writer.request.pk, writer.request.attempt, -1)
        elif ctx.served_by is not None:
            await self._serve_cached(writer, ctx, ctx.served_by)
        else:
            await self._complete(writer, ctx)

    async def _complete(self, writer: ChunkWriter, ctx: PipelineContext) -> None:
        request = writer.request
        record_timeline(request, ctx)
        finish_reason = (ctx.usage.finish_reason or "stop")[:16]  # (the column's width)
        stored_until = self._stored_until(request, ctx, finish_reason)
        usage = measured_usage(ctx, answered=True)
        tail_seq, tail = writer.tail()
        outcome = Outcome(
            result=ctx.result,
            timings=ctx.timings,
            backend_used=ctx.backend_used,
            passages=ctx.passages,
            messages=ctx.messages,
            skipped_stages=ctx.skipped,
            finish_reason=finish_reason,
            cache_key=ctx.cache_key,
            cache_status=CacheStatus.STORED if stored_until else ctx.cache_status,
            cache_expires_at=stored_until,
            tail_seq=tail_seq,
            tail=tail,
            **usage,
        )
        complete = database_sync_to_async(InferenceRequest.objects.complete)
        followers = await self._fenced(writer, lambda row: complete(row.pk, row.attempt, outcome))
        if followers is None:
            return
        request = writer.request
        request.backend_used, request.model_used = ctx.backend_used, outcome.model_used
        metrics.record_finished(request, Status.COMPLETED, ctx.timings, ctx.usage)
        metrics.record_usage(request, usage)
        await events.notify_finished(request.pk, Status.COMPLETED)
        saved = outcome.prompt_tokens + outcome.completion_tokens
        for follower, transport in followers:
            metrics.REQUESTS.labels(transport, request.backend, Status.COMPLETED).inc()
            metrics.SAVED_TOKENS.labels(ctx.backend_used, "dedup").inc(saved)
            await events.notify_finished(follower, Status.COMPLETED)

    @staticmethod
    def _stored_until(
        request: InferenceRequest, ctx: PipelineContext, finish_reason: str
    ) -> datetime | None:
        """When the answer stops serving identical requests; None: not stored. Only
        whole answers of the backend the key names (a fallback's answer is not the
        primary's), and not too long."""
        if ctx.cache_ttl is None or ctx.cache_key is None:
            return None
        storable = (
            ctx.backend_used == request.backend
            and finish_reason in ("stop", "length")
            and len(ctx.result.encode()) <= settings.ORCHESTRATOR_CACHE_MAX_RESULT_BYTES
        )
        metrics.CACHE_STORES.labels("stored" if storable else "skipped").inc()
        return timezone.now() + timedelta(seconds=ctx.cache_ttl) if storable else None

    async def _serve_cached(
        self, writer: ChunkWriter, ctx: PipelineContext, source: InferenceRequest
    ) -> None:
        request = writer.request
        record_timeline(request, ctx)
        outcome = Outcome(
            result=source.result or "",
            prompt_tokens=source.prompt_tokens,
            completion_tokens=source.completion_tokens,
            timings=ctx.timings,
            backend_used=source.backend_used,
            passages=ctx.passages,
            messages=ctx.messages,
            skipped_stages=ctx.skipped,
            finish_reason=source.finish_reason,
            cache_key=ctx.cache_key,
            model_used=source.model_used,  # (and it costs nothing: no backend was asked)
            usage_estimated=source.usage_estimated,
        )
        serve = database_sync_to_async(InferenceRequest.objects.serve_cached)
        followers = await serve(request.pk, request.attempt, source, outcome)
        if followers is None:
            return
        request.backend_used = source.backend_used
        metrics.record_finished(request, Status.COMPLETED, ctx.timings)
        saved = source.prompt_tokens + source.completion_tokens
        for request_id, transport in [(request.pk, request.transport), *followers]:
            if request_id != request.pk:
                metrics.REQUESTS.labels(transport, request.backend, Status.COMPLETED).inc()
            metrics.SAVED_TOKENS.labels(source.backend_used, "cache").inc(saved)
            await events.notify_finished(request_id, Status.COMPLETED)

    async def _fenced(
        self, writer: ChunkWriter, write: Callable[[InferenceRequest], Awaitable[Any]]
    ) -> Any:
        """A fenced write for the attempt's request (None: it no longer holds it),
        following a hand-over to the request that took the generation over."""
        while (result := await write(writer.request)) is None:
            if not await self._successor(writer):
                return None
        return result

    async def _fail(
        self,
        writer: ChunkWriter,
        code: str,
        message: str,
        ctx: PipelineContext,
        detail: str = "",
        followers_fail: bool = False,
    ) -> None:
        fail = database_sync_to_async(InferenceRequest.objects.fail)
        details = consumption(ctx)
        details.update(error_detail=detail[:2000], skipped_stages=ctx.skipped)
        followers = await self._fenced(
            writer,
            lambda row: fail(row.pk, row.attempt, code, message, followers_fail, **details),
        )
        if followers is None:
            return
        metrics.record_finished(writer.request, Status.FAILED, ctx.timings)
        metrics.record_usage(writer.request, details)
        await events.notify_finished(writer.request.pk, Status.FAILED)
        for follower, transport in followers:
            metrics.REQUESTS.labels(transport, writer.request.backend, Status.FAILED).inc()
            await events.notify_finished(follower, Status.FAILED)
        if not followers_fail and ctx.cache_key:
            await events.ring_doorbell()  # any detached followers are pending again

    async def _after_interrupt(self, writer: ChunkWriter, ctx: PipelineContext) -> None:
        request = writer.request
        reason = self._stop_reasons.get(request.pk, "shutdown")
        metrics.CANCELLATIONS.labels(reason).inc()
        logger.info("request %s attempt %s interrupted: %s", request.pk, request.attempt, reason)
        if reason == "shutdown":
            await self._hand_back(writer)
        else:
            await self._record_consumption(writer, ctx)

    async def _record_consumption(self, writer: ChunkWriter, ctx: PipelineContext) -> None:
        """A request that ended under this attempt (cancelled, expired) still says
        what the attempt had consumed: the tokens it was billed for, what the model
        was shown. Best effort: accounting never fails a worker."""
        record = database_sync_to_async(InferenceRequest.objects.record_consumption)
        consumed = consumption(ctx)
        try:
            if await record(writer.request.pk, writer.request.attempt, **consumed):
                metrics.record_usage(writer.request, consumed)
        except Exception:
            logger.warning("cannot record what %s consumed", writer.request.pk, exc_info=True)

    async def _hand_back(self, writer: ChunkWriter) -> None:
        """Return the attempt's request to the queue for another worker."""
        if await self._fenced(writer, self._release):
            await events.ring_doorbell(writer.request.pk)

    async def _release(self, row: InferenceRequest) -> bool | None:
        """One hand-back (None: the row is no longer held, for ``_fenced``)."""
        release = database_sync_to_async(InferenceRequest.objects.release)
        return await release(row.pk, row.attempt) or None

    async def _heartbeat(self, writer: ChunkWriter) -> None:
        """Extend the lease every L/3; stop the attempt once it is no longer held."""
        interval = self.config.lease_seconds / 3
        unreachable_for = 0.0
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self._fenced(writer, self._beat)
                unreachable_for = 0.0
            except DatabaseError:
                # Self-fence: past the lease another worker may own the request.
                unreachable_for += interval
                held = unreachable_for < self.config.lease_seconds
            if not held:
                self._interrupt(writer.request.pk, "lease_lost")
                return

    async def _beat(self, row: InferenceRequest) -> bool | None:
        """One lease extension (None: the row is no longer held, for ``_fenced``)."""
        beat = database_sync_to_async(InferenceRequest.objects.heartbeat)
        return await beat(row.pk, row.attempt, self.config.lease_seconds) or None


def model_run(ctx: PipelineContext) -> str:
    """The model that answered: the request's own upstream model, or the backend's
    (a fallback always runs its own)."""
    backend = ctx.backend_used or ctx.request.backend
    if backend == ctx.request.backend and ctx.request.params.model:
        return ctx.request.params.model
    try:
        return get_backend(backend).model
    except KeyError:  # no longer configured (the request fails for that very reason)
        return ""


def measured_usage(ctx: PipelineContext, answered: bool = False) -> dict[str, Any]:
    """What the attempt consumed and what it cost, for its row. Without the
    upstream's own count of the prompt (a stream cut short, a server that sends no
    usage) the prompt is the backend's estimate, and the usage says it is one."""
    usage, backend = ctx.usage, ctx.backend_used or ctx.request.backend
    prompt_tokens, estimated = usage.prompt_tokens, usage.estimated
    if not prompt_tokens and ctx.messages and (usage.completion_tokens or answered):
        with contextlib.suppress(KeyError):  # (a backend no longer configured)
            count = get_backend(backend).count_tokens
            prompt_tokens = sum(count(message["content"]) for message in ctx.messages)
            estimated = True
    model = model_run(ctx)
    return {
        "model_used": model,
        "cost": cost_of(backend, model, prompt_tokens, usage.completion_tokens),
        "price_version": price_version(),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "usage_estimated": estimated,
    }


def consumption(ctx: PipelineContext) -> dict[str, Any]:
    """What an attempt that did not complete had consumed, for its row."""
    return {
        **measured_usage(ctx),
        "timings": ctx.timings,
        "passages": ctx.passages,
        "messages": ctx.messages,
    }


def fails_followers_too(exc: BackendError) -> bool:
    """A follower fails with its leader only when the same call would fail the same
    way again (the upstream refused the request itself); otherwise it runs alone."""
    return not exc.retryable and (
        exc.code.startswith("upstream_http_4") or exc.code == "model_missing"
    )
