"""Durable inference requests and their streamed chunks.

Every state change of a running request is a fenced compare-and-set: an UPDATE
whose WHERE clause names the state it expects (status, and for a worker the
attempt it holds). Zero rows updated means someone else moved the row first, so
a stale worker can never overwrite a newer attempt or a terminal state.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models, transaction
from django.db.models import F, Q
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


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
ACTIVE_STATUSES = (Status.PENDING, Status.PROCESSING)


def backend_names() -> list[str]:
    """The configured model backends (``settings.ORCHESTRATOR_BACKENDS``): the
    names ``InferenceRequest.backend`` may hold."""
    return sorted(settings.ORCHESTRATOR_BACKENDS)


class ErrorCode(models.TextChoices):
    BACKEND_ERROR = "backend_error"
    INTERNAL_ERROR = "internal_error"
    WORKER_LOST = "worker_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"
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


class InferenceRequestQuerySet(models.QuerySet["InferenceRequest"]):
    def active(self) -> InferenceRequestQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def in_session(self, session_id: str) -> InferenceRequestQuerySet:
        """A conversation's requests, oldest first (scope it to an owner first)."""
        return self.filter(session_id=session_id).order_by("created_at")

    def owned_by(self, api_key_prefix: str | None) -> InferenceRequestQuerySet:
        """One key's requests (None: those submitted without a key)."""
        return self.filter(api_key_id=api_key_prefix)

    def claimable(self) -> InferenceRequestQuerySet:
        """Pending rows in claim order: highest priority first, then oldest."""
        now = timezone.now()
        return (
            self.filter(status=Status.PENDING)
            .filter(Q(deadline_at__isnull=True) | Q(deadline_at__gt=now))
            .order_by("-priority", "created_at")
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
        taken = list(held.order_by("-priority", "created_at"))
        # A new attempt streams from seq 0; the previous attempt's chunks go.
        StreamChunk.objects.filter(request_id__in=[row.pk for row in taken]).delete()
        return taken

    def held_by(self, pk: uuid.UUID, attempt: int) -> InferenceRequestQuerySet:
        """The row, only while this attempt still holds it."""
        return self.filter(pk=pk, attempt=attempt, status=Status.PROCESSING)

    def heartbeat(self, pk: uuid.UUID, attempt: int, lease_seconds: float) -> bool:
        expires = timezone.now() + timedelta(seconds=lease_seconds)
        return bool(self.held_by(pk, attempt).update(lease_expires_at=expires))

    def complete(self, pk: uuid.UUID, attempt: int, outcome: Outcome) -> bool:
        return bool(
            self.held_by(pk, attempt).update(
                status=Status.COMPLETED,
                result=outcome.result,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                timings=outcome.timings,
                backend_used=outcome.backend_used,
                passages=outcome.passages,
                messages=outcome.messages,
                skipped_stages=outcome.skipped_stages,
                finish_reason=outcome.finish_reason,
                finished_at=timezone.now(),
                lease_expires_at=None,
            )
        )

    def fail(
        self,
        pk: uuid.UUID,
        attempt: int,
        code: str,
        message: str,
        **details: Any,
    ) -> bool:
        """``details``: what the attempt got to (timings, passages, messages)."""
        return bool(
            self.held_by(pk, attempt).update(
                status=Status.FAILED,
                error_code=code,
                error=message[:2000],
                **details,
                finished_at=timezone.now(),
                lease_expires_at=None,
            )
        )

    def release(self, pk: uuid.UUID, attempt: int) -> bool:
        """Hand a held row back to the queue (graceful shutdown)."""
        return bool(
            self.held_by(pk, attempt).update(
                status=Status.PENDING, lease_owner="", lease_expires_at=None
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
                finished_at=timezone.now(),
                lease_expires_at=None,
            )
        )

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
            finished_at=now,
            lease_expires_at=None,
        )
        requeued = lost.filter(attempt__lt=F("max_attempts")).update(
            status=Status.PENDING, lease_owner="", lease_expires_at=None
        )
        return requeued, failed

    def expire_overdue(self) -> int:
        now = timezone.now()
        return self.filter(status__in=ACTIVE_STATUSES, deadline_at__lt=now).update(
            status=Status.EXPIRED,
            error_code=ErrorCode.DEADLINE_EXCEEDED,
            error="The request's deadline passed before it finished.",
            finished_at=now,
            lease_expires_at=None,
        )

    def pending_older_than(self, seconds: float) -> bool:
        cutoff = timezone.now() - timedelta(seconds=seconds)
        return self.filter(status=Status.PENDING, created_at__lt=cutoff).exists()


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

    class Meta(AbstractAPIKey.Meta):
        pass

    # ``last_used_at`` is written at most this often: not a write per request.
    TOUCH_EVERY = timedelta(seconds=60)

    def touch(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= self.TOUCH_EVERY:
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


class InferenceRequest(models.Model):
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
    session_id = models.CharField(max_length=128, db_index=True)
    prompt = models.TextField()
    # The chat messages a /v1 client sent (it owns the conversation): Assemble
    # passes them on instead of building them from ``prompt`` and the session.
    # Empty for the native API; ``prompt`` then holds the last user message.
    conversation = models.JSONField(default=list, blank=True, db_default=[])
    metadata = models.JSONField(default=dict, blank=True)
    priority = models.SmallIntegerField(default=5)
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
    # Why generation stopped: "stop" (the model ended), "length" (max_tokens).
    finish_reason = models.CharField(max_length=16, blank=True, default="", db_default="")
    # /v1 requests: their live readers (inference.services.reading), and when the
    # last one left without the answer: cancelled after the disconnect grace unless
    # a reader comes back (which clears this).
    readers = models.PositiveIntegerField(default=0, db_default=0)
    detached_at = models.DateTimeField(null=True, blank=True)

    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # SHA-256 of what the request asked for (Submission.fingerprint): a repeated
    # key with another request is refused (422) instead of answered with this one.
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="", db_default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)

    objects = InferenceRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The claim query: pending rows by priority, then age.
            models.Index(
                F("priority").desc(),
                "created_at",
                condition=Q(status="pending"),
                name="claim_order_idx",
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
        ]
        # An Idempotency-Key is unique per key (two clients may pick the same
        # one); anonymous callers share one namespace.
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False, api_key__isnull=False),
                name="unique_idempotency_key_per_api_key",
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False, api_key__isnull=True),
                name="unique_anonymous_idempotency_key",
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
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def append_chunks(self, first_seq: int, texts: list[str]) -> bool:
        """Persist a batch of tokens for this attempt, fenced on the attempt.

        The row update and the chunk insert commit together: a reclaimed attempt
        updates 0 rows and writes nothing.
        """
        last = first_seq + len(texts) - 1
        with transaction.atomic():
            held = InferenceRequest.objects.held_by(self.pk, self.attempt)
            if not held.update(last_seq=last):
                return False
            StreamChunk.objects.bulk_create(
                StreamChunk(request_id=self.pk, seq=first_seq + i, text=t, attempt=self.attempt)
                for i, t in enumerate(texts)
            )
        return True


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


class DocumentChunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["document", "position"]
        constraints = [
            models.UniqueConstraint(fields=["document", "position"], name="unique_chunk_position")
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.position}"


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
