"""Verbs on inference requests: the one path REST, WebSocket and SSE call.

Each verb writes to the database first and publishes its channel-layer event
only after the transaction commits (``transaction.on_commit``): an event never
announces a row a reader cannot see yet, and "accepted" always means committed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference.models import Document, DocumentChunk, InferenceRequest, Status
from orchestrator_site import logs
from pipeline import events, metrics
from pipeline.retrieval import chunk_text

logger = logging.getLogger(__name__)


@dataclass
class Submission:
    """A validated prompt submission (what the serializers produce)."""

    prompt: str
    session_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: int = 5
    backend: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    deadline_seconds: float | None = None
    transport: str = "rest"
    idempotency_key: str | None = None
    client_ip: str | None = None


class AdmissionRefused(Exception):
    """The request was not accepted; ``retry_after`` says when to try again."""

    code = "refused"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class QueueFull(AdmissionRefused):
    code = "queue_full"


class ClientBusy(AdmissionRefused):
    code = "too_many_in_flight"


def backlog_retry_after(waiting: int) -> int:
    """Seconds until ``waiting`` requests drain at the last minute's completion rate."""
    since = timezone.now() - timedelta(seconds=60)
    per_second = InferenceRequest.objects.filter(finished_at__gte=since).count() / 60
    return int(min(max(waiting / per_second if per_second else 60, 1), 120))


def admit(submission: Submission) -> None:
    """Refuse work the system cannot take: a full queue (503) or a client with too
    many requests in flight (429). Counts, then inserts: a soft cap that a burst
    of concurrent submits can overshoot by a few."""
    cap = settings.ORCHESTRATOR_MAX_PENDING
    if cap:
        pending = InferenceRequest.objects.filter(status=Status.PENDING).count()
        if pending >= cap:
            raise QueueFull(f"The queue is full ({pending} waiting).", backlog_retry_after(pending))
    per_client = settings.ORCHESTRATOR_MAX_INFLIGHT_PER_CLIENT
    if per_client and submission.client_ip:
        mine = InferenceRequest.objects.active().filter(client_ip=submission.client_ip).count()
        if mine >= per_client:
            raise ClientBusy(
                f"You have {mine} requests in flight (limit {per_client}).",
                backlog_retry_after(mine),
            )


def _after_commit(publish: Any, *args: Any) -> None:
    transaction.on_commit(lambda: async_to_sync(publish)(*args))


def submit_request(submission: Submission) -> tuple[InferenceRequest, bool]:
    """Store a new pending request and ring the workers' doorbell.

    Returns ``(request, created)``: a repeated ``idempotency_key`` returns the
    request first stored under it, and ``created`` is False. Raises
    ``AdmissionRefused`` (``QueueFull``, ``ClientBusy``) under overload.
    """
    if submission.idempotency_key:
        existing = InferenceRequest.objects.filter(
            idempotency_key=submission.idempotency_key
        ).first()
        if existing is not None:
            return existing, False
    try:
        admit(submission)
    except AdmissionRefused as refused:
        metrics.REFUSED.labels(refused.code).inc()
        raise
    try:
        with transaction.atomic():
            request = InferenceRequest.objects.create(**_row_fields(submission))
            _after_commit(events.ring_doorbell, request.pk)
    except IntegrityError:
        if not submission.idempotency_key:
            raise
        # Lost a race with the same key: the winner's row is the answer.
        return InferenceRequest.objects.get(idempotency_key=submission.idempotency_key), False
    metrics.SUBMITTED.labels(submission.transport).inc()
    logs.REQUEST_ID.set(str(request.pk))
    logger.info("accepted %s request", submission.transport)
    return request, True


def _row_fields(submission: Submission) -> dict[str, Any]:
    now = timezone.now()
    deadline = submission.deadline_seconds or settings.ORCHESTRATOR_DEFAULT_DEADLINE_SECONDS
    return {
        "prompt": submission.prompt,
        "session_id": submission.session_id or str(uuid.uuid4()),
        "metadata": submission.metadata,
        "priority": submission.priority,
        "backend": submission.backend or settings.ORCHESTRATOR_DEFAULT_BACKEND,
        "params": submission.params,
        "transport": submission.transport,
        "idempotency_key": submission.idempotency_key or None,
        "client_ip": submission.client_ip,
        "max_attempts": settings.ORCHESTRATOR_MAX_ATTEMPTS,
        "created_at": now,
        "deadline_at": now + timedelta(seconds=deadline),
    }


def cancel_request(request_id: uuid.UUID) -> InferenceRequest:
    """Cancel a pending or running request; a terminal one is left as it is.

    Raises ``InferenceRequest.DoesNotExist`` for an unknown id.
    """
    with transaction.atomic():
        cancelled = InferenceRequest.objects.cancel(request_id)
        request = InferenceRequest.objects.get(pk=request_id)
        if cancelled:
            metrics.REQUESTS.labels(request.transport, request.backend, Status.CANCELLED).inc()
            _after_commit(events.notify_finished, request.pk, Status.CANCELLED)
            # lease_owner is the holding worker's control channel.
            _after_commit(events.tell_worker_to_cancel, request.lease_owner, request.pk)
    return request


def retry_request(request_id: uuid.UUID) -> InferenceRequest | None:
    """Submit a terminal request's prompt again as a new request (admin action)."""
    original = InferenceRequest.objects.get(pk=request_id)
    if not original.is_terminal:
        return None
    request, _ = submit_request(
        Submission(
            prompt=original.prompt,
            session_id=original.session_id,
            metadata=original.metadata,
            priority=original.priority,
            backend=original.backend,
            params=original.params,
            transport="admin",
        )
    )
    return request


def ingest_document(title: str, text: str, source: str = "") -> Document:
    """Store a document split into chunks; the same ``source`` again replaces it
    (without one, the document gets a fresh ``api:<uuid>`` source)."""
    source = source or f"api:{uuid.uuid4()}"
    chunks = chunk_text(text, settings.ORCHESTRATOR_DOCUMENT_CHUNK_CHARS)
    with transaction.atomic():
        Document.objects.filter(source=source).delete()
        document = Document.objects.create(title=title, source=source, text=text)
        DocumentChunk.objects.bulk_create(
            DocumentChunk(document=document, position=i, text=chunk)
            for i, chunk in enumerate(chunks)
        )
    return document


def delete_session(session_id: str) -> int:
    """Forget a conversation: cancel its running requests, then delete them all.

    Returns how many requests were deleted (0: no such session).
    """
    with transaction.atomic():
        session = InferenceRequest.objects.in_session(session_id)
        for request_id in session.active().values_list("pk", flat=True):
            cancel_request(request_id)
        deleted = session.delete()[1].get("inference.InferenceRequest", 0)
    return deleted
