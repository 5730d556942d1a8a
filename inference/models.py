"""Durable inference requests and their streamed chunks.

Every state change of a running request is a fenced compare-and-set: an UPDATE
whose WHERE clause names the state it expects (status, and for a worker the
attempt it holds). Zero rows updated means someone else moved the row first, so
a stale worker can never overwrite a newer attempt or a terminal state.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey


class Status(models.TextChoices):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Transport(models.TextChoices):
    """How a request arrived."""

    REST = "rest"
    WEBSOCKET = "ws", "WebSocket"
    CLI = "cli", "manage.py infer"
    ADMIN = "admin", "admin retry"
    OPENAI = "openai", "OpenAI-compatible /v1"


# Priority tiers: the native 0-9 scale (higher runs sooner) in four named tiers, by
# their lowest priority. The name is a tier's number when a client uses it.
TIERS = {"background": 0, "low": 1, "normal": 5, "high": 9}
PRIORITY_NORMAL = TIERS["normal"]


def tier_of(priority: int) -> str:
    """The tier a priority falls in (0 background, 1-4 low, 5-8 normal, 9 high)."""
    return max((floor, name) for name, floor in TIERS.items() if floor <= priority)[1]


def tier_range(tier: str) -> tuple[int, int]:
    """The lowest and highest priority of a tier."""
    floors = sorted(TIERS.values())
    floor = TIERS[tier]
    above = [f for f in floors if f > floor]
    return floor, (above[0] - 1 if above else 9)


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
ACTIVE_STATUSES = (Status.PENDING, Status.PROCESSING)


def canonical_sha256(value: Any) -> str:
    """Hex SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces): the
    same data hashes the same whatever order its keys arrived in."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def backend_names() -> list[str]:
    """The configured model backends (``settings.ORCHESTRATOR_BACKENDS``): the
    names ``InferenceRequest.backend`` may hold."""
    return sorted(settings.ORCHESTRATOR_BACKENDS)


class FinishReason(models.TextChoices):
    """Why a request's generation ended, for every final status."""

    STOP = "stop", "the model ended its answer"
    LENGTH = "length", "cut at max_tokens"
    CANCELLED = "cancelled", "cancelled"
    ERROR = "error", "failed"
    EXPIRED = "expired", "its deadline (or its tier's wait) passed"


class ErrorCode(models.TextChoices):
    BACKEND_ERROR = "backend_error"
    INTERNAL_ERROR = "internal_error"
    WORKER_LOST = "worker_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    QUEUE_TIMEOUT = "queue_timeout"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Outcome:
    """What a finished attempt produced, written in one fenced UPDATE."""

    result: str
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float]
    backend_used: str
    passages: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    skipped_stages: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    # The response cache (pipeline/cache.py): the request's key, what the cache
    # did for it, and until when this answer serves others (None: it does not).
    cache_key: str | None = None
    cache_status: str = ""
    cache_expires_at: datetime | None = None
    model_used: str = ""
    usage_estimated: bool = False
    # What the backend call cost (only the request that made it pays: see ``billed``).
    cost: Decimal = Decimal(0)
    price_version: str = ""
    # The stream's last tokens from ``tail_seq`` on, committed with the end: one
    # transaction and one wake-up of the readers fewer than a flush, then the end.
    tail_seq: int = 0
    tail: list[str] = field(default_factory=list)

    @property
    def billed(self) -> dict[str, Any]:
        return {"cost": self.cost, "price_version": self.price_version}

    def tail_columns(self) -> dict[str, Any]:
        """``last_seq`` when the completion brings tokens of its own."""
        return {"last_seq": self.tail_seq + len(self.tail) - 1} if self.tail else {}


class CacheStatus(models.TextChoices):
    """What the response cache and in-flight dedup did for a request."""

    HIT = "hit", "served from the cache"
    COLLAPSED = "collapsed", "shared an identical request's backend call"
    STORED = "stored", "generated, and stored for others"
    MISS = "miss", "generated, not stored"
    BYPASS = "bypass", "the client asked to skip the cache"
    INELIGIBLE = "ineligible", "sampled (or the cache is off): generated"
    DETACHED = "detached", "its leader failed: runs alone"


def _answer(outcome: Outcome) -> dict[str, Any]:
    """The columns a completion writes (for the request and its followers)."""
    return {
        "status": Status.COMPLETED,
        "result": outcome.result,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "timings": outcome.timings,
        "backend_used": outcome.backend_used,
        "passages": outcome.passages,
        "messages": outcome.messages,
        "finish_reason": outcome.finish_reason,
        "cache_key": outcome.cache_key,
        "model_used": outcome.model_used,
        "usage_estimated": outcome.usage_estimated,
        "finished_at": timezone.now(),
        "lease_expires_at": None,
    }


def copy_stream(source: InferenceRequest, targets: models.QuerySet[Any]) -> None:
    """Give each target request a copy of ``source``'s stream so far (same seq,
    under the target's own attempt): a hit, or a follower attaching late."""
    chunks = list(
        StreamChunk.objects.filter(request_id=source.pk, attempt=source.attempt).values_list(
            "seq", "text"
        )
    )
    StreamChunk.objects.bulk_create(
        StreamChunk(request_id=pk, seq=seq, text=text, attempt=attempt)
        for pk, attempt in targets.values_list("pk", "attempt")
        for seq, text in chunks
    )


class InferenceRequestQuerySet(models.QuerySet["InferenceRequest"]):
    def active(self) -> InferenceRequestQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def in_session(self, session_id: str) -> InferenceRequestQuerySet:
        """A conversation's requests, oldest first (scope it to an owner first)."""
        return self.filter(session_id=session_id).order_by("created_at")

    def owned_by(
        self, api_key_prefix: str | None, owner_id: int | None = None
    ) -> InferenceRequestQuerySet:
        """One key's requests, or one signed-in account's (both None: those
        submitted by neither)."""
        return self.filter(api_key_id=api_key_prefix, owner_id=owner_id)

    def ahead_of(self, request: InferenceRequest) -> int:
        """Pending requests a worker would claim before ``request`` (claim order:
        priority, fair-share stamp, age), counted on the claim index."""
        same = Q(priority=request.priority)
        return (
            self.filter(status=Status.PENDING)
            .filter(
                Q(priority__gt=request.priority)
                | (same & Q(fair_at__lt=request.fair_at))
                | (same & Q(fair_at=request.fair_at, created_at__lt=request.created_at))
            )
            .count()
        )

    def claimable(self) -> InferenceRequestQuerySet:
        """Pending rows in claim order: highest priority first; inside a priority,
        by fair-share stamp (each key's requests spaced by their cost, so a key
        that floods queues behind itself, not ahead of others), then oldest."""
        now = timezone.now()
        return (
            self.filter(status=Status.PENDING)
            .filter(Q(deadline_at__isnull=True) | Q(deadline_at__gt=now))
            .order_by("-priority", "fair_at", "created_at")
        )

    def claim_next(self, owner: str, lease_seconds: float) -> InferenceRequest | None:
        """Atomically move the best pending row to processing for ``owner``."""
        claimed = self.claim_batch(owner, lease_seconds, 1)
        return claimed[0] if claimed else None

    def claim_batch(
        self, owner: str, lease_seconds: float, limit: int, config_hash: str = ""
    ) -> list[InferenceRequest]:
        """Atomically move up to ``limit`` of the best pending rows to processing
        for ``owner``, in claim order: one transaction however many (a worker with
        free slots takes a burst at once instead of queueing a claim per row).

        On PostgreSQL ``SKIP LOCKED`` lets concurrent workers pick different rows;
        on SQLite the transaction holds the write lock from its start. The status
        CAS decides in any case.
        """
        for _ in range(5):
            with transaction.atomic():
                candidates = list(
                    self.claimable()
                    .select_for_update(skip_locked=True)
                    .values_list("pk", flat=True)[:limit]
                )
                if not candidates:
                    return []
                if taken := self._take(candidates, owner, lease_seconds, config_hash):
                    return taken
        return []

    def _take(
        self, candidates: list[uuid.UUID], owner: str, lease_seconds: float, config_hash: str
    ) -> list[InferenceRequest]:
        now = timezone.now()
        self.filter(pk__in=candidates, status=Status.PENDING).update(
            status=Status.PROCESSING,
            attempt=F("attempt") + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            last_seq=-1,
            config_hash=config_hash,
        )
        held = InferenceRequest.objects.filter(pk__in=candidates, lease_owner=owner, started_at=now)
        taken = list(held.order_by("-priority", "fair_at", "created_at"))
        # Only a row claimed before can have chunks or followers: a first attempt
        # costs no more queries (the common case, one claim per burst).
        if again := [row.pk for row in taken if row.attempt > 1]:
            # A leader run again (its worker was lost) keeps its followers: they
            # start over with it.
            followers = self.filter(coalesced_into__in=again, status=Status.PROCESSING)
            restarted = again + list(followers.values_list("pk", flat=True))
            # (a restart, not a try of their own: their budget grows with it)
            followers.update(
                attempt=F("attempt") + 1, max_attempts=F("max_attempts") + 1, last_seq=-1
            )
            # A new attempt streams from seq 0; the previous attempt's chunks go.
            StreamChunk.objects.filter(request_id__in=restarted).delete()
        return taken

    def held_by(self, pk: uuid.UUID, attempt: int) -> InferenceRequestQuerySet:
        """The row, only while this attempt still holds it (a follower is held by
        no worker: its leader's attempt generates for it)."""
        return self.filter(
            pk=pk, attempt=attempt, status=Status.PROCESSING, coalesced_into__isnull=True
        )

    def heartbeat(self, pk: uuid.UUID, attempt: int, lease_seconds: float) -> bool:
        expires = timezone.now() + timedelta(seconds=lease_seconds)
        return bool(self.held_by(pk, attempt).update(lease_expires_at=expires))

    def complete(
        self, pk: uuid.UUID, attempt: int, outcome: Outcome
    ) -> list[tuple[uuid.UUID, str]] | None:
        """Store the answer and the stream's last tokens (``outcome.tail``), fenced on
        the attempt; the request's followers (in-flight dedup) complete with it in
        the same transaction. Returns the followers
        completed (id, transport), or None when the attempt no longer holds it."""
        answer = _answer(outcome) | outcome.tail_columns()
        with transaction.atomic():
            held = self.held_by(pk, attempt).update(
                **answer,
                **outcome.billed,
                skipped_stages=outcome.skipped_stages,
                cache_status=outcome.cache_status,
                cache_expires_at=outcome.cache_expires_at,
            )
            if not held:
                return None
            followers: list[tuple[uuid.UUID, str]] = []
            readers = [(pk, attempt)]  # who gets the tail (a follower's stream is a copy)
            if outcome.cache_key:  # eligible: identical requests may follow it
                followers = self._followers(pk)
                following = self.filter(pk__in=[f for f, _ in followers])
                following.update(**answer, cache_status=CacheStatus.COLLAPSED, cache_source=pk)
                if outcome.tail and followers:
                    readers += following.values_list("pk", "attempt")
            if outcome.tail:
                _insert_chunks(readers, outcome.tail_seq, outcome.tail)
        return followers

    def _followers(self, pk: uuid.UUID) -> list[tuple[uuid.UUID, str]]:
        """A leader's live followers (id, transport), locked: one cancelled meanwhile
        waits for this transaction, then finds itself finished already."""
        followers = self.select_for_update().filter(coalesced_into=pk, status=Status.PROCESSING)
        return list(followers.values_list("pk", "transport"))

    def serve_cached(
        self, pk: uuid.UUID, attempt: int, source: InferenceRequest, outcome: Outcome
    ) -> list[tuple[uuid.UUID, str]] | None:
        """Complete the request with a cache entry's answer (``outcome``) and a copy
        of the source's stream (same chunks, under this request's attempt), fenced
        like any completion: readers and resumes see an ordinary stream. Followers
        it had (a leader run again) are answered alike. Returns them, or None when
        the attempt no longer holds the request."""
        with transaction.atomic():
            served = self.held_by(pk, attempt).update(
                **_answer(outcome),
                skipped_stages=outcome.skipped_stages,
                cache_status=CacheStatus.HIT,
                cache_source=source.pk,
                last_seq=source.last_seq,
            )
            if not served:
                return None
            followers = self._followers(pk)
            self.filter(pk__in=[f for f, _ in followers]).update(
                **_answer(outcome), cache_status=CacheStatus.HIT, cache_source=source.pk
            )
            copy_stream(source, self.filter(pk__in=[pk, *(f for f, _ in followers)]))
        return followers

    def cache_entry(self, key: str, max_age: float | None = None) -> InferenceRequest | None:
        """The newest live answer stored under ``key`` (at most ``max_age`` s old)."""
        now = timezone.now()
        entries = self.filter(cache_key=key, cache_expires_at__gt=now, status=Status.COMPLETED)
        if max_age is not None:
            entries = entries.filter(finished_at__gte=now - timedelta(seconds=max_age))
        return entries.order_by("-finished_at").first()

    def forget_cached(self, key: str | None = None) -> int:
        """Stop serving stored answers: those under ``key`` (scope the queryset to
        an owner first), or all. Returns how many entries went."""
        live = self.filter(cache_expires_at__gt=timezone.now())
        if key is not None:
            live = live.filter(cache_key=key)
        return live.update(cache_expires_at=None)

    # --- in-flight dedup: one backend call for identical requests ----------------
    def lead_or_follow(
        self, pk: uuid.UUID, attempt: int, key: str, max_followers: int
    ) -> tuple[str, uuid.UUID | None]:
        """Share one backend call among identical requests in flight. The database
        decides who generates: a partial unique index admits one processing row
        per ``dedup_key``. Returns one of

        - ``("leader", None)``: this attempt generates, for its followers too;
        - ``("follower", leader_id)``: attached to the leader, which completes it;
        - ``("overflow", None)``: the leader serves enough already: run alone;
        - ``("gone", None)``: the leader finished meanwhile (look in the cache again);
        - ``("lost", None)``: this attempt no longer holds the request.
        """
        try:
            with transaction.atomic():
                if not self.held_by(pk, attempt).update(dedup_key=key, cache_key=key):
                    return "lost", None
            return "leader", None
        except IntegrityError:
            pass  # another processing request holds the key
        with transaction.atomic():
            # Locked, so the leader cannot complete (or write a batch) while this
            # request attaches: it is completed and mirrored to, or not attached.
            leader = (
                self.select_for_update()
                .filter(dedup_key=key, status=Status.PROCESSING)
                .only("pk", "attempt", "last_seq")
                .first()
            )
            if leader is None:
                return "gone", None
            busy = self.filter(coalesced_into=leader.pk, status=Status.PROCESSING).count()
            if busy >= max_followers:
                updated = self.held_by(pk, attempt).update(cache_key=key)
                return ("overflow", None) if updated else ("lost", None)
            if not self._attach(pk, attempt, leader, key):
                return "lost", None
        return "follower", leader.pk

    def _attach(self, pk: uuid.UUID, attempt: int, leader: InferenceRequest, key: str) -> bool:
        """Make this request (and any followers it had: a leader run again) follow
        ``leader``, each with a copy of the leader's stream so far."""
        mine = [
            pk,
            *self.filter(coalesced_into=pk, status=Status.PROCESSING).values_list("pk", flat=True),
        ]
        attached = self.held_by(pk, attempt).update(
            coalesced_into=leader.pk,
            lease_owner="",
            lease_expires_at=None,
            dedup_key=None,
            cache_key=key,
            cache_status=CacheStatus.COLLAPSED,
        )
        if not attached:
            return False
        followers = self.filter(pk__in=mine)
        followers.update(coalesced_into=leader.pk, last_seq=leader.last_seq)
        copy_stream(leader, followers)
        return True

    def detach_followers(self, leaders: list[uuid.UUID]) -> int:
        """Followers of leaders that will not answer them go back to the queue to
        run on their own, never to join another leader (``detached``)."""
        return self.filter(coalesced_into__in=leaders, status=Status.PROCESSING).update(
            status=Status.PENDING,
            coalesced_into=None,
            cache_status=CacheStatus.DETACHED,
            lease_owner="",
            lease_expires_at=None,
        )

    def release_orphans(self) -> int:
        """The reaper's sweep for followers whose leader ended without answering
        them (expired, lost for good, cancelled with nobody to hand over to,
        deleted): back to the queue, to run alone."""
        leaderless = self.filter(status=Status.PROCESSING, lease_expires_at__isnull=True).filter(
            Q(coalesced_into__isnull=True) | Q(coalesced_into__status__in=TERMINAL_STATUSES)
        )
        orphans = list(leaderless.values_list("pk", flat=True))
        # Re-checked as it is written: one cancelled since the SELECT stays cancelled.
        still = self.filter(pk__in=orphans, status=Status.PROCESSING, lease_expires_at__isnull=True)
        return still.update(
            status=Status.PENDING, coalesced_into=None, cache_status=CacheStatus.DETACHED
        )

    def hand_over(self, leader: InferenceRequest) -> InferenceRequest | None:
        """A running leader (as it was before its cancel) was just cancelled: its
        oldest live follower takes over the generation (the worker's lease and the
        dedup key), the others follow it, and the cancelled row points at it (see
        ``successor``). The upstream call goes on. None when nobody followed."""
        if not leader.dedup_key:
            return None
        followers = self.filter(coalesced_into=leader.pk, status=Status.PROCESSING)
        # Locked: a follower being cancelled right now is not the one promoted.
        successor = followers.select_for_update().order_by("created_at").first()
        if successor is None:
            return None
        self.filter(pk=leader.pk).update(dedup_key=None, coalesced_into=successor.pk)
        self.filter(pk=successor.pk).update(
            coalesced_into=None,
            dedup_key=leader.dedup_key,
            lease_owner=leader.lease_owner,
            lease_expires_at=leader.lease_expires_at,
            cache_status="",
        )
        followers.update(coalesced_into=successor.pk)
        successor.refresh_from_db()
        return successor

    def successor(self, dedup_key: str, owner: str) -> InferenceRequest | None:
        """The request carrying the generation a cancelled leader handed over (the
        dedup key moves with it), while the worker ``owner`` holds it."""
        return self.filter(
            dedup_key=dedup_key,
            status=Status.PROCESSING,
            coalesced_into__isnull=True,
            lease_owner=owner,
        ).first()

    def fail(
        self,
        pk: uuid.UUID,
        attempt: int,
        code: str,
        message: str,
        followers_fail: bool = False,
        **details: Any,
    ) -> list[tuple[uuid.UUID, str]] | None:
        """``details``: what the attempt got to (timings, passages, messages).

        The request's followers fail with it when the same call would fail again
        (``followers_fail``); otherwise they go back to the queue to run alone.
        Returns the followers failed, or None when the attempt no longer holds it."""
        failure = {
            "status": Status.FAILED,
            "error_code": code,
            "error": message[:2000],
            "finish_reason": FinishReason.ERROR,
            "finished_at": timezone.now(),
            "lease_expires_at": None,
        }
        with transaction.atomic():
            if not self.held_by(pk, attempt).update(**failure, **details):
                return None
            if not followers_fail:
                self.detach_followers([pk])
                return []
            followers = self._followers(pk)
            self.filter(pk__in=[f for f, _ in followers]).update(**failure)
        return followers

    def release(self, pk: uuid.UUID, attempt: int) -> bool:
        """Hand a held row back to the queue (graceful shutdown)."""
        return bool(
            self.held_by(pk, attempt).update(
                status=Status.PENDING, lease_owner="", lease_expires_at=None, dedup_key=None
            )
        )

    def cancel(self, pk: uuid.UUID, detached_at: datetime | None = None) -> bool:
        """Cancel an active request; with ``detached_at``, only if it is still
        the abandoned stream of that moment (no reader came back since)."""
        rows = self.filter(pk=pk, status__in=ACTIVE_STATUSES)
        if detached_at is not None:
            rows = rows.filter(detached_at=detached_at)
        return bool(
            rows.update(
                status=Status.CANCELLED,
                error_code=ErrorCode.CANCELLED,
                error="Cancelled by the client.",
                finish_reason=FinishReason.CANCELLED,
                finished_at=timezone.now(),
                lease_expires_at=None,
            )
        )

    def record_consumption(self, pk: uuid.UUID, attempt: int, **consumed: Any) -> bool:
        """What an attempt had consumed (tokens, messages) when its request ended
        without it: cancelled or expired under it. Accounting only, for that attempt:
        the status stays as it is. If its key's budget had already folded it in (the
        worker learnt late), the ledger gets the difference."""
        ended = self.filter(pk=pk, attempt=attempt, status__in=(Status.CANCELLED, Status.EXPIRED))
        with transaction.atomic():
            row = ended.values("api_key_id", "budget_period").first()
            if row is None:
                return False
            ledger = None
            if row["budget_period"] is not None:  # locked first, as admission does
                ledger = (
                    BudgetLedger.objects.select_for_update()
                    .filter(api_key_id=row["api_key_id"], period_start__lte=row["budget_period"])
                    .order_by("-period_start")
                    .first()
                )
            before = ended.select_for_update().get()
            if not ended.update(**consumed):
                return False
            if ledger is not None and before.budget_settled:
                after = self.get(pk=pk)
                BudgetLedger.objects.filter(pk=ledger.pk).update(
                    tokens=F("tokens") + after.billed_tokens - before.billed_tokens,
                    cost=F("cost") + after.cost - before.cost,
                )
            return True

    def reclaim_expired_leases(self) -> tuple[int, int]:
        """Expired leases go back to pending, or fail once attempts are spent.

        Returns (requeued, failed).
        """
        now = timezone.now()
        lost = self.filter(status=Status.PROCESSING, lease_expires_at__lt=now)
        failed = lost.filter(attempt__gte=F("max_attempts")).update(
            status=Status.FAILED,
            error_code=ErrorCode.WORKER_LOST,
            error="The worker running this request stopped responding.",
            finish_reason=FinishReason.ERROR,
            finished_at=now,
            lease_expires_at=None,
        )
        # A requeued leader keeps its followers, not its dedup key: the key admits
        # processing rows only, and another request may take it meanwhile.
        requeued = lost.filter(attempt__lt=F("max_attempts")).update(
            status=Status.PENDING, lease_owner="", lease_expires_at=None, dedup_key=None
        )
        return requeued, failed

    def expire_overdue(self) -> int:
        now = timezone.now()
        return self.filter(status__in=ACTIVE_STATUSES, deadline_at__lt=now).update(
            status=Status.EXPIRED,
            error_code=ErrorCode.DEADLINE_EXCEEDED,
            error="The request's deadline passed before it finished.",
            finish_reason=FinishReason.EXPIRED,
            finished_at=now,
            lease_expires_at=None,
        )

    def promote_waiting(self, after_seconds: float) -> dict[tuple[str, str], int]:
        """Aging: a pending request still waiting ``after_seconds`` after its fair
        turn (or its last promotion) moves up one tier, never above high, so a
        steady stream of higher work cannot hold it back for ever. Counted from its
        turn, not its arrival: a key's own backlog (turns in the future) does not
        age past other keys. Plain UPDATEs: the claim index keeps working. Returns
        how many moved, by (from, to)."""
        now = timezone.now()
        since = now - timedelta(seconds=after_seconds)
        waited = Q(promoted_at__lte=since) | Q(promoted_at__isnull=True, fair_at__lte=since)
        moved = {}
        tiers = sorted(TIERS, key=TIERS.__getitem__)
        # Highest first: a row moves one tier per sweep, not all the way up.
        for lower, upper in reversed(list(itertools.pairwise(tiers))):
            low, high = tier_range(lower)
            rows = self.filter(waited, status=Status.PENDING, priority__range=(low, high))
            if count := rows.update(priority=TIERS[upper], promoted_at=now):
                moved[(lower, upper)] = count
        return moved

    def expire_queued(self, max_wait: dict[str, float]) -> int:
        """A request pending longer than its tier's maximum wait never got a slot in
        time: it expires (``queue_timeout``). Only requests never started: one
        handed back or requeued has its deadline, and keeps its place."""
        now = timezone.now()
        expired = 0
        for tier, seconds in max_wait.items():
            rows = self.filter(
                status=Status.PENDING,
                attempt=0,
                priority__range=tier_range(tier),
                created_at__lt=now - timedelta(seconds=seconds),
            )
            expired += rows.update(
                status=Status.EXPIRED,
                error_code=ErrorCode.QUEUE_TIMEOUT,
                finish_reason=FinishReason.EXPIRED,
                error=f"No worker took it within the {tier} tier's {seconds:g} s wait.",
                finished_at=now,
            )
        return expired

    def pending_older_than(self, seconds: float) -> bool:
        cutoff = timezone.now() - timedelta(seconds=seconds)
        return self.filter(status=Status.PENDING, created_at__lt=cutoff).exists()


class BudgetPeriod(models.TextChoices):
    """How often a key's budget starts over (UTC)."""

    DAY = "day", "a calendar day"
    MONTH = "month", "a calendar month"
    WINDOW = "window", "fixed windows of budget_window_hours from the key's creation"


class ApiKey(AbstractAPIKey):
    """A client's credential. The secret is shown once, at creation; only its
    SHA-512 hash is stored, and the 8-character ``prefix`` finds the row."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
        help_text="Who the key was issued to (for the record; it grants no staff rights).",
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Blank: the server default. 0: unlimited."
    )
    max_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="Blank: the server default. 0: unlimited."
    )
    can_manage_documents = models.BooleanField(
        default=False, help_text="May add and delete documents of the shared RAG store."
    )
    max_priority = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(9)],
        help_text="Blank: any (0-9). A request asking for more runs at this priority.",
    )
    fair_share_weight = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Its share of a busy tier against other keys (2: twice a weight-1 key's).",
    )
    # Budgets (inference.budgets): blank takes the server default (usage.budget_*).
    budget_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens per period. Blank: the server default. 0: none."
    )
    budget_cost = models.DecimalField(
        max_digits=16,
        decimal_places=8,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Cost per period (models.prices). Blank: the server default. 0: none.",
    )
    budget_period = models.CharField(
        max_length=8,
        choices=BudgetPeriod.choices,
        blank=True,
        help_text="Blank: the server default.",
    )
    budget_window_hours = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="A window period's length, counted from the key's creation. Blank: default.",
    )

    class Meta(AbstractAPIKey.Meta):
        pass

    # ``last_used_at`` is written at most this often: not a write per request.
    TOUCH_EVERY = timedelta(seconds=60)

    def touch(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= self.TOUCH_EVERY:
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


class BudgetLedger(models.Model):
    """What a key's finished requests consumed in one budget period, folded in
    (inference.budgets). Requests still running, or finished too recently to fold,
    count on their own rows until they are."""

    api_key = models.ForeignKey(
        ApiKey, to_field="prefix", on_delete=models.CASCADE, related_name="budget_ledgers"
    )
    period_start = models.DateTimeField()
    tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=8, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "period_start"], name="one_ledger_per_key_and_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id} from {self.period_start:%Y-%m-%d %H:%M}"


class InferenceRequest(models.Model):
    # Set by admission on the instance a submit returns: what its key's budget has
    # left (inference.budgets.Remaining), for the response's headers.
    budget_left: Any = None

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The key that submitted it (None: anonymous, or a staff session). A key sees
    # only its own requests; deleting a key deletes them (revoke to keep them).
    api_key = models.ForeignKey(
        ApiKey,
        to_field="prefix",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="requests",
    )
    # The signed-in (non-staff) account that submitted it from the chat page: it
    # sees only its own, like a key.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="inference_requests",
    )
    session_id = models.CharField(max_length=128, db_index=True)
    prompt = models.TextField()
    # The chat messages a /v1 client sent (it owns the conversation): Assemble
    # passes them on instead of building them from ``prompt`` and the session.
    # Empty for the native API; ``prompt`` then holds the last user message.
    conversation = models.JSONField(default=list, blank=True, db_default=[])
    metadata = models.JSONField(default=dict, blank=True)
    priority = models.SmallIntegerField(default=5)
    # What the client asked for, when a key's ceiling or aging changed it.
    priority_requested = models.SmallIntegerField(null=True, blank=True)
    # When aging last moved it up a tier (InferenceRequestQuerySet.promote_waiting).
    promoted_at = models.DateTimeField(null=True, blank=True)
    # Fair share inside a priority: the virtual time its turn comes (admission
    # stamps it from its key's previous request; claims go in this order).
    fair_at = models.DateTimeField(default=timezone.now, db_default=Now())
    transport = models.CharField(max_length=16, choices=Transport.choices, default=Transport.REST)

    backend = models.CharField(max_length=64)
    backend_used = models.CharField(max_length=64, blank=True)
    params = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    result = models.TextField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    # What the upstream said about a failure (its error body): for the admin and
    # the logs only; callers get ``error``.
    error_detail = models.TextField(blank=True, default="", db_default="")
    # The configuration (orchestrator_site/config.py: its hash) the attempt ran under.
    config_hash = models.CharField(max_length=12, blank=True, default="", db_default="")
    # Stages a feature flag turned off for this attempt.
    skipped_stages = models.JSONField(default=list, blank=True, db_default=[])

    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    # Highest chunk seq written by the current attempt (-1: none yet).
    last_seq = models.IntegerField(default=-1)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # What the model was shown: retrieved passages (with scores) and the final
    # chat messages, written by the worker when the attempt completes.
    passages = models.JSONField(default=list, blank=True)
    messages = models.JSONField(default=list, blank=True)
    # Seconds per pipeline stage, plus "first_token" (since the attempt started).
    timings = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # The counts are the backend's estimate: nothing better existed (an upstream
    # that sent no usage, a stream cut before the upstream counted).
    usage_estimated = models.BooleanField(default=False, db_default=False)
    # Its key's budget (inference.budgets): the period it counts toward (None: the
    # key had no budget), what admission reserved for it while it runs, and whether
    # its final usage has been folded into that period's BudgetLedger.
    budget_period = models.DateTimeField(null=True, blank=True)
    budget_reserved_tokens = models.PositiveIntegerField(default=0, db_default=0)
    budget_reserved_cost = models.DecimalField(
        max_digits=16, decimal_places=8, default=0, db_default=0
    )
    budget_settled = models.BooleanField(default=False, db_default=False)
    # The model that answered (the backend's, an upstream's, or a fallback's), and
    # what its tokens cost by the price table (models.prices) of ``price_version``;
    # 0 for a cache hit or a dedup follower: no backend was asked.
    model_used = models.CharField(max_length=200, blank=True, default="", db_default="")
    cost = models.DecimalField(max_digits=16, decimal_places=8, default=0, db_default=0)
    price_version = models.CharField(max_length=12, blank=True, default="", db_default="")
    # Why generation ended (FinishReason, or what an upstream said: e.g. content_filter).
    finish_reason = models.CharField(max_length=16, blank=True, default="", db_default="")
    # /v1 requests: their live readers (inference.services.reading), and when the
    # last one left without the answer: cancelled after the disconnect grace unless
    # a reader comes back (which clears this).
    readers = models.PositiveIntegerField(default=0, db_default=0)
    detached_at = models.DateTimeField(null=True, blank=True)

    # The response cache and in-flight dedup (pipeline/cache.py). ``cache_control``:
    # the client's directives (mode, max_age, ttl), read when the worker decides.
    cache_control = models.JSONField(default=dict, blank=True, db_default={})
    # The canonical key of what determines the answer (null: not eligible).
    cache_key = models.CharField(max_length=64, null=True, blank=True)
    cache_status = models.CharField(
        max_length=16, choices=CacheStatus.choices, blank=True, default="", db_default=""
    )
    # A completed answer serves identical requests until then (null: it does not).
    cache_expires_at = models.DateTimeField(null=True, blank=True)
    # Where a hit's or a follower's answer came from.
    cache_source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="served"
    )
    # Set while this request rides on an identical one's backend call (a follower);
    # on a cancelled leader, the follower that took its generation over.
    coalesced_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="followers"
    )
    # Set on the one processing request generating for this key (a leader).
    dedup_key = models.CharField(max_length=64, null=True, blank=True)

    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # SHA-256 of what the request asked for (Submission.fingerprint): a repeated
    # key with another request is refused (422) instead of answered with this one.
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="", db_default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)

    objects = InferenceRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The claim query: pending rows by priority, fair-share stamp, age.
            models.Index(
                F("priority").desc(),
                "fair_at",
                "created_at",
                condition=Q(status="pending"),
                name="fair_claim_order_idx",
            ),
            # The reaper: leases that may have expired.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="processing"),
                name="lease_expiry_idx",
            ),
            # Admin list and API list filtered by status, newest first.
            models.Index(fields=["status", "-created_at"], name="status_created_idx"),
            # A key's requests, newest first (the API list for a key).
            models.Index(fields=["api_key", "-created_at"], name="key_created_idx"),
            # Recent completions (Retry-After estimates, dashboard).
            models.Index(fields=["finished_at"], name="finished_idx"),
            # The reaper's deadline sweep, without scanning finished rows.
            models.Index(
                fields=["deadline_at"],
                condition=Q(status__in=["pending", "processing"]),
                name="active_deadline_idx",
            ),
            # Cache lookups: a key's live entries, newest first.
            models.Index(
                "cache_key",
                F("finished_at").desc(),
                condition=Q(cache_expires_at__isnull=False),
                name="cache_lookup_idx",
            ),
            # Counting and flushing live entries.
            models.Index(
                fields=["cache_expires_at"],
                condition=Q(cache_expires_at__isnull=False),
                name="cache_expiry_idx",
            ),
            # A budgeted key's requests not yet folded into its ledger.
            models.Index(
                fields=["api_key"],
                condition=Q(budget_period__isnull=False, budget_settled=False),
                name="budget_unsettled_idx",
            ),
        ]
        # An Idempotency-Key is unique per key or account (two clients may pick
        # the same one); anonymous callers share one namespace.
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False, api_key__isnull=False),
                name="unique_idempotency_key_per_api_key",
            ),
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False, owner__isnull=False),
                name="unique_idempotency_key_per_owner",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(
                    idempotency_key__isnull=False, api_key__isnull=True, owner__isnull=True
                ),
                name="unique_anonymous_idempotency_key",
            ),
            # In-flight dedup's leadership: one generating request per key.
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=Q(status="processing", dedup_key__isnull=False),
                name="one_dedup_leader_per_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def is_open_to_readers(self) -> bool:
        """A /v1 request still running: its readers are counted (``services.reading``)."""
        return self.transport == Transport.OPENAI and not self.is_terminal

    @property
    def cache_report(self) -> dict[str, str | None]:
        """What the response cache did for it, as every transport reports it."""
        source = str(self.cache_source_id) if self.cache_source_id else None
        return {"cache_status": self.cache_status, "cache_source": source}

    @property
    def usage(self) -> dict[str, int | bool]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "estimated": self.usage_estimated,
        }

    @property
    def billed_tokens(self) -> int:
        """Tokens its own backend call consumed (a cache hit or follower made none)."""
        if self.cache_status in (CacheStatus.HIT, CacheStatus.COLLAPSED):
            return 0
        return self.prompt_tokens + self.completion_tokens

    def append_chunks(
        self, first_seq: int, texts: list[str], mirror: bool = False
    ) -> list[tuple[uuid.UUID, int]] | None:
        """Persist a batch of tokens for this attempt, fenced on the attempt; with
        ``mirror`` (a dedup leader), the same batch for each of its followers.

        The row update and the chunk insert commit together: a reclaimed attempt
        updates 0 rows and writes nothing. Returns the ``(request, attempt)`` rows
        written (this one first), or None when the attempt no longer holds it.
        """
        last = first_seq + len(texts) - 1
        with transaction.atomic():
            held = InferenceRequest.objects.held_by(self.pk, self.attempt)
            if not held.update(last_seq=last):
                return None
            rows = [(self.pk, self.attempt)]
            if mirror:
                followers = InferenceRequest.objects.filter(
                    coalesced_into=self.pk, status=Status.PROCESSING
                )
                rows += followers.values_list("pk", "attempt")
                if len(rows) > 1:
                    followers.update(last_seq=last)
            _insert_chunks(rows, first_seq, texts)
        return rows


def _insert_chunks(rows: list[tuple[uuid.UUID, int]], first_seq: int, texts: list[str]) -> None:
    """The same tokens, numbered from ``first_seq``, for each ``(request, attempt)``."""
    StreamChunk.objects.bulk_create(
        StreamChunk(request_id=pk, seq=first_seq + i, text=t, attempt=attempt)
        for pk, attempt in rows
        for i, t in enumerate(texts)
    )


class StreamChunk(models.Model):
    request = models.ForeignKey(InferenceRequest, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    attempt = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.UniqueConstraint(fields=["request", "seq"], name="unique_chunk_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.seq}"


class CacheEpoch(models.Model):
    """The response cache's generation, part of every cache key: a flush bumps it,
    retiring every entry at once, answers still being generated under the old
    number included (one row)."""

    number = models.PositiveIntegerField(default=0)
    flushed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"cache epoch {self.number}"

    @classmethod
    def current(cls) -> int:
        return cls.objects.filter(pk=1).values_list("number", flat=True).first() or 0

    @classmethod
    def bump(cls) -> int:
        with transaction.atomic():
            cls.objects.get_or_create(pk=1)
            cls.objects.filter(pk=1).update(number=F("number") + 1, flushed_at=timezone.now())
            return cls.current()


class FeatureFlag(models.Model):
    """An operator's override of a feature flag's configured default
    (``inference.flags``)."""

    name = models.CharField(max_length=64, unique=True)
    enabled = models.BooleanField(default=True)
    percent = models.PositiveSmallIntegerField(
        default=100,
        validators=[MaxValueValidator(100)],
        help_text="Share of API keys it is on for (stable per key); 100: all.",
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}: {'on' if self.enabled else 'off'} ({self.percent}%)"

    def clean(self) -> None:
        if self.name not in settings.ORCHESTRATOR_FEATURES:
            known = ", ".join(sorted(settings.ORCHESTRATOR_FEATURES))
            raise ValidationError({"name": f"Not a feature flag; known: {known}."})


class Document(models.Model):
    """A text in the project's document store, split into chunks for retrieval."""

    title = models.CharField(max_length=300)
    # Where it came from (a path, a URL, any key): ingesting the same source
    # again replaces the document.
    source = models.CharField(max_length=500, unique=True)
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title


class DocumentChunkManager(models.Manager["DocumentChunk"]):
    """Chunks, and whether this process may skip retrieval: a store found empty
    is believed empty for ``EMPTY_RECHECK_SECONDS`` (no query per request while
    nobody has ingested anything); one found with chunks is searched from then on.
    An ingest in this process is seen at once, one in another process within that."""

    EMPTY_RECHECK_SECONDS = 1.0
    _empty_until = 0.0  # time.monotonic(); per process, shared by every thread
    _has_chunks = False

    def known_empty(self) -> bool:
        """True while the store was empty at a recent look (no I/O)."""
        return time.monotonic() < DocumentChunkManager._empty_until

    def store_is_empty(self) -> bool:
        """Look (one EXISTS), unless the store is known empty or known to have chunks."""
        if self.known_empty():
            return True
        if not DocumentChunkManager._has_chunks:
            DocumentChunkManager._has_chunks = self.exists()
            if not DocumentChunkManager._has_chunks:
                DocumentChunkManager._empty_until = time.monotonic() + self.EMPTY_RECHECK_SECONDS
        return not DocumentChunkManager._has_chunks

    def added(self) -> None:
        """Chunks were stored (an ingest in this process): search from now on."""
        DocumentChunkManager._empty_until = 0.0

    def forget(self) -> None:
        """Look again next time (tests: each starts from its own database)."""
        DocumentChunkManager._empty_until, DocumentChunkManager._has_chunks = 0.0, False


class DocumentChunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()

    objects = DocumentChunkManager()

    class Meta:
        ordering = ["document", "position"]
        constraints = [
            models.UniqueConstraint(fields=["document", "position"], name="unique_chunk_position")
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"


class SessionTitle(models.Model):
    """A conversation's name, as its owner renamed it (the session list shows the
    first prompt otherwise). The owner is the caller's key, else its user (a staff
    or signed-in session), else neither (an anonymous caller in development)."""

    api_key = models.ForeignKey(
        ApiKey,
        to_field="prefix",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="session_titles",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="session_titles",
    )
    session_id = models.CharField(max_length=128)
    title = models.CharField(max_length=200)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "session_id"],
                condition=Q(api_key__isnull=False),
                name="unique_session_title_per_key",
            ),
            models.UniqueConstraint(
                fields=["user", "session_id"],
                condition=Q(api_key__isnull=True, user__isnull=False),
                name="unique_session_title_per_user",
            ),
            models.UniqueConstraint(
                fields=["session_id"],
                condition=Q(api_key__isnull=True, user__isnull=True),
                name="unique_session_title_unowned",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.session_id}: {self.title}"


def chunk_text(text: str, max_chars: int = 1000) -> list[str]:
    """Paragraph-packed chunks of at most ``max_chars`` (long paragraphs split on words)."""
    chunks: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        for piece in _split_long(paragraph, max_chars):
            if current and len(current) + len(piece) + 2 > max_chars:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph] if paragraph else []
    pieces, current = [], ""
    for word in paragraph.split():
        if current and len(current) + len(word) + 1 > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current} {word}" if current else word
    return [*pieces, current] if current else pieces
