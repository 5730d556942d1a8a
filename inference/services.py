"""Verbs on inference requests: the one path REST, WebSocket and SSE call.

Each verb writes to the database first and publishes its channel-layer event
only after the transaction commits (``transaction.on_commit``): an event never
announces a row a reader cannot see yet, and "accepted" always means committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import Context
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from inference import admission, budgets, events, logs, metrics, pricing
from inference.auth import Caller
from inference.models import (
    ACTIVE_STATUSES,
    CacheEpoch,
    CacheStatus,
    Document,
    DocumentChunk,
    InferenceRequest,
    InferenceRequestQuerySet,
    SessionTitle,
    Status,
    Transport,
    backend_names,
    canonical_sha256,
    chunk_text,
)
from inference.streaming import wait_until_finished

logger = logging.getLogger(__name__)


@dataclass
class Submission:
    """A validated prompt submission (what the serializers produce)."""

    prompt: str
    # A /v1 client's own messages (then ``prompt`` is the last user message).
    conversation: list[dict[str, str]] = field(default_factory=list)
    session_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: int = 5
    backend: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    deadline_seconds: float | None = None
    transport: Transport = Transport.REST
    idempotency_key: str | None = None
    caller: Caller = field(default_factory=Caller)
    # What the client told the cache (serializers.cache_directives): not part of
    # the fingerprint, as it changes how the answer is found, not what it is.
    cache_control: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What the request asks for, hashed: a repeated Idempotency-Key must come
        with the same (the transport it arrives on does not count)."""
        asked = {
            "prompt": self.prompt,
            "conversation": self.conversation,
            "session_id": self.session_id,
            "metadata": self.metadata,
            "priority": self.priority,
            "backend": self.backend,
            "params": self.params,
            "deadline_seconds": self.deadline_seconds,
        }
        return canonical_sha256(asked)

    def estimated_usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens it may cost, before any are counted: its
        text (4 characters a token) and the most it may generate."""
        text = sum(len(m.get("content", "")) for m in self.conversation) or len(self.prompt)
        max_tokens = self.params.get("max_tokens") or settings.ORCHESTRATOR_DEFAULT_MAX_TOKENS
        return text // 4, int(max_tokens)

    def estimated_tokens(self) -> int:
        return sum(self.estimated_usage())

    def most_usage(self, backend: str) -> tuple[int, Decimal]:
        """The most tokens it may consume, and what they may cost on ``backend``:
        what its key's budget holds for it while it runs."""
        prompt, completion = self.estimated_usage()
        model = self.params.get("model") or ""
        return prompt + completion, pricing.most_cost_of(backend, model, prompt, completion)

    @classmethod
    def from_request(cls, request: InferenceRequest, **overrides: Any) -> Submission:
        """The same prompt and options as a stored request, submitted again by
        the same owner."""
        fields = {
            "caller": Caller(key=request.api_key, member=request.owner),
            "prompt": request.prompt,
            "conversation": request.conversation,
            "session_id": request.session_id,
            "metadata": request.metadata,
            "priority": request.priority
            if request.priority_requested is None
            else request.priority_requested,
            "backend": request.backend,
            "params": request.params,
            "cache_control": request.cache_control,
        }
        return cls(**{**fields, **overrides})


# The model a backend runs when its options name none. These mirror the engine's
# defaults: inference may not import pipeline (tests/test_layering.py), so they
# are read from the configuration, as /v1/models does.
DEFAULT_MODELS = {"LlamaCppBackend": "SmolLM2-135M-Instruct", "EchoBackend": "echo"}


def offered_backends(show_echo: bool) -> list[dict[str, str]]:
    """The backends the chat page offers, each with the model it answers with (echo,
    for tests and benchmarks, only when ``show_echo``)."""
    return [
        {"name": name, "model": _model_of(name)}
        for name in backend_names()
        if show_echo or not (name == "echo" or _class_name(name) == "EchoBackend")
    ]


def _class_name(backend: str) -> str:
    return str(settings.ORCHESTRATOR_BACKENDS[backend].get("class", "")).rsplit(".", 1)[-1]


def _model_of(backend: str) -> str:
    """Its configured ``model``, else its model file's name, else its class's
    default ("" if unknown)."""
    options = settings.ORCHESTRATOR_BACKENDS[backend].get("options", {})
    if options.get("model"):
        return str(options["model"])
    if options.get("model_path"):
        return PurePath(str(options["model_path"])).stem
    return DEFAULT_MODELS.get(_class_name(backend), "")


def _after_commit(publish: Any, *args: Any) -> None:
    transaction.on_commit(lambda: async_to_sync(publish)(*args))


def submit_request(submission: Submission, ring: bool = True) -> tuple[InferenceRequest, bool]:
    """Store a new pending request and ring the workers' doorbell (``ring=False``:
    the caller rings it after this returns, from its event loop — see
    ``asubmit_request``).

    Returns ``(request, created)``: a repeated ``idempotency_key`` (per API key)
    returns the request first stored under it, and ``created`` is False. Raises
    ``admission.Refusal`` under overload (a full queue, too many in flight).
    """
    submission.caller.require("add")
    mine = submission.caller.own_requests()
    key = submission.idempotency_key
    if key and (existing := mine.filter(idempotency_key=key).first()) is not None:
        return _replayed(existing, submission), False
    try:
        (request,) = _store([submission], ring)
    except (IntegrityError, admission.Refusal):
        # Raced the same Idempotency-Key (lost the insert, or was refused while the
        # winner held the budget): the winner's row is the answer.
        if key and (winner := mine.filter(idempotency_key=key).first()) is not None:
            return _replayed(winner, submission), False
        raise
    logs.REQUEST_ID.set(str(request.pk))
    logger.info("accepted %s request", submission.transport)
    return request, True


def submit_batch(submissions: Sequence[Submission], ring: bool = True) -> list[InferenceRequest]:
    """Store new pending requests of one caller, all or none (admitted together,
    one multi-row INSERT), and ring the doorbell once. Raises
    ``admission.Refusal`` if they do not all fit (queue, tier, in-flight slots,
    budget)."""
    submissions[0].caller.require("add")
    requests = _store(submissions, ring)
    logger.info("accepted a batch of %d requests", len(requests))
    return requests


def _store(submissions: Sequence[Submission], ring: bool) -> list[InferenceRequest]:
    """Admit and insert one caller's submissions in one transaction; on any refusal
    nothing is stored and their in-flight slots are given back."""
    requests: list[InferenceRequest] = []
    try:
        with transaction.atomic():
            requests = _admitted(submissions)
            InferenceRequest.objects.bulk_create(requests)
            if ring:
                _after_commit(events.ring_doorbell, requests[0].pk)
    except Exception:
        if requests:  # (a refusal in _admitted gave its slots back itself)
            admission.release_in_flight(submissions[0].caller, [r.pk for r in requests])
        raise
    _count_accepted(requests, submissions)
    return requests


def _admitted(submissions: Sequence[Submission]) -> list[InferenceRequest]:
    """One caller's submissions as unsaved rows, once its budget (inside the
    caller's transaction: it locks the key's ledger) and admission let them in.
    Raises ``admission.Refusal`` (their in-flight slots given back)."""
    caller = submissions[0].caller
    rows = [_row_fields(submission) for submission in submissions]
    arrivals = [
        admission.Arrival(
            request_id=row["id"],
            arrived=row["created_at"],
            deadline=row["deadline_at"],
            priority=row["priority"],
            cost=admission.fair_share_cost(caller, submission.estimated_tokens()),
        )
        for row, submission in zip(rows, submissions, strict=True)
    ]
    asks = [s.most_usage(row["backend"]) for row, s in zip(rows, submissions, strict=True)]
    try:
        # The budget first: a refused request must not take an in-flight slot
        # or move its key's fair-share clock.
        budget_fields, left = budgets.reserve(caller, rows[0]["created_at"], asks)
        stamps = admission.admit_submissions(caller, arrivals)
    except Exception:
        admission.release_in_flight(caller, [row["id"] for row in rows])
        raise
    requests = [
        InferenceRequest(**row, **budget, fair_at=stamp)
        for row, budget, stamp in zip(rows, budget_fields, stamps, strict=True)
    ]
    requests[-1].budget_left = left
    return requests


def _count_accepted(
    requests: Sequence[InferenceRequest], submissions: Sequence[Submission]
) -> None:
    clamped = sum(r.priority < s.priority for r, s in zip(requests, submissions, strict=True))
    if clamped:
        metrics.PRIORITY_CLAMPED.inc(clamped)
    for transport, count in Counter(s.transport for s in submissions).items():
        metrics.SUBMITTED.labels(transport).inc(count)


SubmitOutcome = tuple[InferenceRequest, bool] | Exception


def submit_many(submissions: Sequence[Submission]) -> list[SubmitOutcome]:
    """Single submits of any callers, stored together (``SubmitGroup``): one
    transaction and one multi-row INSERT for every submission that needs nothing
    else of the database. One with an Idempotency-Key or a budgeted key is
    stored alone, as ``submit_request`` does: its checks read rows the group has
    not written yet. Each outcome is its own, ``(request, created)`` or what
    refused it; nothing is accepted before its commit. Rings no doorbell."""
    if len(submissions) == 1:  # (the common case when the process is not busy)
        metrics.SUBMIT_GROUP.observe(1)
        return [_outcome(submit_request, submissions[0])]
    outcomes: list[SubmitOutcome | None] = [None] * len(submissions)
    grouped: dict[int, InferenceRequest] = {}
    for index, submission in enumerate(submissions):
        if submission.idempotency_key or budgets.budget_of(submission.caller) is not None:
            outcomes[index] = _outcome(submit_request, submission)
            continue
        try:
            submission.caller.require("add")
            (grouped[index],) = _admitted([submission])
        except Exception as exc:  # a refusal: this one's answer, not the group's
            outcomes[index] = exc
    if grouped:
        _insert_group(grouped, submissions, outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _insert_group(
    grouped: dict[int, InferenceRequest],
    submissions: Sequence[Submission],
    outcomes: list[SubmitOutcome | None],
) -> None:
    """The admitted rows of a group in one transaction (one multi-row INSERT); each
    one's outcome goes to its index in ``outcomes``."""
    try:
        with transaction.atomic():
            InferenceRequest.objects.bulk_create(grouped.values())
    except Exception as exc:  # (the database went away) none of the group is stored
        for index, request in grouped.items():
            admission.release_in_flight(submissions[index].caller, [request.pk])
            outcomes[index] = exc
        return
    metrics.SUBMIT_GROUP.observe(len(grouped))
    for index, request in grouped.items():
        _count_accepted([request], [submissions[index]])
        outcomes[index] = (request, True)
        logs.REQUEST_ID.set(str(request.pk))
        logger.info("accepted %s request (a group of %d)", request.transport, len(grouped))


def _outcome(
    submit: Callable[..., tuple[InferenceRequest, bool]], submission: Submission
) -> SubmitOutcome:
    try:
        return submit(submission, ring=False)
    except Exception as exc:
        return exc


def _replayed(existing: InferenceRequest, submission: Submission) -> InferenceRequest:
    """The request first stored under an Idempotency-Key, if this one asks for the
    same; a different request under the same key is a client bug: 422 (the IETF
    draft), rather than silently answering with the first."""
    stored = existing.idempotency_fingerprint
    if stored and stored != submission.fingerprint():
        message = "This Idempotency-Key was already used for a different request."
        raise admission.Refusal(422, "idempotency_key_reused", message)
    return existing


async def asubmit_request(
    submission: Submission, to_thread: Callable[..., Any] = sync_to_async
) -> tuple[InferenceRequest, bool]:
    """``submit_request`` from async code, grouped with the submits this process
    receives meanwhile (``SubmitGroup``): the rows are committed in a thread, then
    the doorbell rings from the event loop, so no thread waits on the channel
    layer. Views keep ``sync_to_async`` (request signals manage the connection);
    consumers pass Channels' ``database_sync_to_async``, which manages it itself."""
    request, created = await submit_group.submit(submission, to_thread)
    logs.REQUEST_ID.set(str(request.pk))
    if created:
        await events.submitted.ring()
    return request, created


class SubmitGroup:
    """Group commit of the single submits a process receives at once.

    The first submit to arrive while no group is being stored leads: it takes
    every submit waiting (its own included) to its thread and stores them with
    ``submit_many``, in one transaction. Submits arriving meanwhile wait, and the
    first of them leads the next group once this one is done. A lone submit is
    stored at once, as before; under load a thread hop, a transaction and a
    commit serve many. The group is stored by a task of its own, so a leader
    whose client goes away leaves its group's answers to come.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Submission, asyncio.Future[Any]]] = []
        self.storing: asyncio.Task[None] | None = None

    async def submit(
        self, submission: Submission, to_thread: Callable[..., Any]
    ) -> tuple[InferenceRequest, bool]:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((submission, answer))
        try:
            while not answer.done():
                if self.storing is None:
                    group, self.waiting = self.waiting, []
                    self.storing = asyncio.ensure_future(self._store(group, to_thread))
                await asyncio.wait([self.storing])
        except asyncio.CancelledError:
            answer.cancel()  # its client left: the group stores it all the same
            raise
        result: tuple[InferenceRequest, bool] = answer.result()
        return result

    async def _store(
        self, group: list[tuple[Submission, asyncio.Future[Any]]], to_thread: Callable[..., Any]
    ) -> None:
        try:
            outcomes = await to_thread(submit_many)([submission for submission, _ in group])
        except Exception as exc:
            outcomes = [exc] * len(group)
        finally:
            self.storing = None
        if len(outcomes) != len(group):  # (never: but no waiter may wait forever)
            outcomes = [RuntimeError("the submit group lost its outcomes")] * len(group)
        for (_, answer), outcome in zip(group, outcomes, strict=True):
            if answer.cancelled():
                continue
            if isinstance(outcome, Exception):
                answer.set_exception(outcome)
            else:
                answer.set_result(outcome)


submit_group = SubmitGroup()


def _row_fields(submission: Submission) -> dict[str, Any]:
    now = timezone.now()
    deadline = submission.deadline_seconds or settings.ORCHESTRATOR_DEFAULT_DEADLINE_SECONDS
    request_id = uuid.uuid4()
    return {
        "id": request_id,
        "api_key_id": submission.caller.key_prefix,
        "owner_id": submission.caller.person_id,
        "prompt": submission.prompt,
        "conversation": submission.conversation,
        # A /v1 call reads its own answer: it is the request's first reader.
        "readers": 1 if submission.transport == Transport.OPENAI else 0,
        # A new conversation is named after its first request, so the worker
        # knows it has no history without asking the database (earlier_turns).
        "session_id": submission.session_id or str(request_id),
        "metadata": submission.metadata,
        "priority": submission.caller.priority(submission.priority),
        "priority_requested": submission.priority,
        "backend": submission.backend or settings.ORCHESTRATOR_DEFAULT_BACKEND,
        "params": submission.params,
        "cache_control": submission.cache_control,
        "transport": submission.transport,
        "idempotency_key": submission.idempotency_key or None,
        "idempotency_fingerprint": submission.fingerprint() if submission.idempotency_key else "",
        "client_ip": submission.caller.ip,
        "max_attempts": settings.ORCHESTRATOR_MAX_ATTEMPTS,
        "created_at": now,
        "deadline_at": now + timedelta(seconds=deadline),
    }


def cancel_request(request_id: uuid.UUID, detached_at: datetime | None = None) -> InferenceRequest:
    """Cancel a pending or running request; a terminal one is left as it is
    (with ``detached_at``: only a stream still abandoned since then).

    Raises ``InferenceRequest.DoesNotExist`` for an unknown id.
    """
    rows = InferenceRequest.objects
    with transaction.atomic():
        before = rows.select_for_update().get(pk=request_id)
        cancelled = rows.cancel(request_id, detached_at)
        # A dedup leader's followers still want the answer: one takes it over.
        successor = rows.hand_over(before) if cancelled else None
        request = rows.get(pk=request_id)
        if cancelled:
            metrics.REQUESTS.labels(request.transport, request.backend, Status.CANCELLED).inc()
            _after_commit(events.notify_finished, request.pk, Status.CANCELLED)
        if successor is not None:
            metrics.DEDUP.labels("promoted").inc()
            _after_commit(
                events.tell_worker_of_hand_over, request.lease_owner, request.pk, successor.pk
            )
        elif cancelled:
            # lease_owner is the holding worker's control channel.
            _after_commit(events.tell_worker_to_cancel, request.lease_owner, request.pk)
    return request


# --- readers of /v1 requests and the disconnect grace --------------------------------
#
# A /v1 request is cancelled once nobody is reading it any more (after
# ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS), so an upstream is not paid for tokens
# no one reads. Readers are counted on the row: the /v1 call itself (it is created
# with one), a replay of it, a resumed stream, a waiting fetch. A process that dies
# holding a count leaves the request to complete, and stay fetchable.


@dataclass
class Reading:
    """One reader's stay; it sets ``answered`` once it has delivered the answer."""

    answered: bool = False


@contextlib.asynccontextmanager
async def reading(
    request_id: uuid.UUID,
    counts: bool,
    counted: bool = False,
    to_thread: Callable[..., Any] = sync_to_async,
) -> AsyncIterator[Reading]:
    """Be one of the request's readers while inside (``counts``: a /v1 request not
    finished yet; ``counted``: the row was created with this reader). Leaving
    without the answer may start the grace. ``to_thread`` as in ``asubmit_request``."""
    stay = Reading()
    if counts and not counted:
        await to_thread(join_request)(request_id)
    try:
        yield stay
    finally:
        if counts and not stay.answered:
            stamp = await to_thread(leave_request)(request_id)
            if stamp is not None:
                _start_grace(request_id, stamp)


async def await_result(request: InferenceRequest, wait: float) -> InferenceRequest:
    """The request once finished, or as it is after ``wait`` seconds (for views:
    rows are read on the view's own thread). Meanwhile the waiter is one of a /v1
    request's readers: it keeps a dropped call from being cancelled as abandoned."""
    if wait <= 0 or request.is_terminal:
        return request
    async with reading(request.pk, request.is_open_to_readers) as stay:
        request = await wait_until_finished(request.pk, wait)
        stay.answered = request.is_terminal
    return request


def join_request(request_id: uuid.UUID) -> None:
    InferenceRequest.objects.filter(pk=request_id).update(
        readers=F("readers") + 1, detached_at=None
    )


def leave_request(request_id: uuid.UUID) -> datetime | None:
    """One reader fewer. When it was the last and abandoned requests are cancelled,
    the time it left (the grace's start), else None."""
    rows = InferenceRequest.objects.filter(pk=request_id)
    stamp = timezone.now()
    with transaction.atomic():
        rows.filter(readers__gt=0).update(readers=F("readers") - 1)
        if not settings.ORCHESTRATOR_OPENAI_CANCEL_ON_DISCONNECT:
            return None
        abandoned = rows.filter(readers=0, status__in=ACTIVE_STATUSES).update(detached_at=stamp)
    return stamp if abandoned else None


# The grace timers, held so that the event loop keeps them alive.
_grace_timers: set[asyncio.Task[None]] = set()


def _start_grace(request_id: uuid.UUID, stamp: datetime) -> None:
    # A context of its own: a task started from a view would otherwise inherit the
    # view's thread, which is gone once the view returns.
    timer = asyncio.create_task(_cancel_if_still_abandoned(request_id, stamp), context=Context())
    _grace_timers.add(timer)
    timer.add_done_callback(_grace_timers.discard)


async def _cancel_if_still_abandoned(request_id: uuid.UUID, stamp: datetime) -> None:
    await asyncio.sleep(settings.ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS)
    try:  # a reader who came back cleared the stamp: nothing happens
        await database_sync_to_async(cancel_request)(request_id, detached_at=stamp)
    except (DatabaseError, InferenceRequest.DoesNotExist):
        logger.warning("cannot cancel the abandoned request %s", request_id, exc_info=True)


def retry_request(request_id: uuid.UUID) -> InferenceRequest | None:
    """Submit a terminal request's prompt again as a new request (admin action)."""
    original = InferenceRequest.objects.get(pk=request_id)
    if not original.is_terminal:
        return None
    request, _ = submit_request(Submission.from_request(original, transport=Transport.ADMIN))
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
    DocumentChunk.objects.added()
    return document


def delete_session(session: InferenceRequestQuerySet) -> int:
    """Forget a conversation (a caller's ``in_session`` rows): cancel its running
    requests, then delete them all. Returns how many were deleted (0: none)."""
    with transaction.atomic():
        for request_id in session.active().values_list("pk", flat=True):
            cancel_request(request_id)
        deleted = session.delete()[1].get("inference.InferenceRequest", 0)
    return deleted


# --- conversations: the requests a caller submitted itself, grouped by session_id -----
# (staff included: the sidebar is a person's own; staff inspect others in the admin)

TITLE_CHARS = 60


@dataclass
class SessionSummary:
    session_id: str
    title: str
    turns: int
    last_activity: datetime
    started_at: datetime


@dataclass
class SessionPage:
    sessions: list[SessionSummary]
    # (last_activity, session_id) of the last one listed, when more follow.
    after: tuple[datetime, str] | None


def conversations(caller: Caller, action: str) -> InferenceRequestQuerySet:
    """The requests behind the caller's own conversations, for ``action`` (staff
    need the model permission, as everywhere)."""
    caller.require(action)
    return caller.own_requests()


def title_owner(caller: Caller) -> dict[str, Any]:
    """Whose renamed titles a caller reads and writes: its key's, else its
    signed-in user's, else nobody's (an anonymous caller in development)."""
    if caller.key is not None:
        return {"api_key_id": caller.key.prefix, "user_id": None}
    # A staff session's user, or a signed-in member's account.
    person = caller.user or caller.member
    return {"api_key_id": None, "user_id": getattr(person, "pk", None)}


def session_titles(caller: Caller) -> QuerySet[SessionTitle]:
    return SessionTitle.objects.filter(**title_owner(caller))


def default_title(prompt: str) -> str:
    """The first prompt on one line, cut to about TITLE_CHARS characters."""
    text = " ".join(prompt.split())
    if len(text) <= TITLE_CHARS:
        return text
    return text[: TITLE_CHARS - 1].rstrip() + "…"


def list_sessions(
    caller: Caller, page_size: int = 50, after: tuple[datetime, str] | None = None
) -> SessionPage:
    """The caller's conversations, newest activity first, a page after ``after``.
    One GROUP BY over the caller's rows (a key's: its key_created_idx), one
    look-up of the page's first prompts, one of its titles."""
    groups = (
        conversations(caller, "view")
        .values("session_id")
        .annotate(turns=Count("pk"), last_activity=Max("created_at"), first_at=Min("created_at"))
        .order_by("-last_activity", "session_id")
    )
    if after is not None:
        at, session_id = after
        groups = groups.filter(
            Q(last_activity__lt=at) | Q(last_activity=at, session_id__gt=session_id)
        )
    rows = list(groups[: page_size + 1])
    more = len(rows) > page_size
    sessions = _summaries(caller, rows[:page_size])
    last = sessions[-1] if sessions else None
    return SessionPage(sessions, (last.last_activity, last.session_id) if more and last else None)


def _summaries(caller: Caller, rows: Sequence[Mapping[str, Any]]) -> list[SessionSummary]:
    if not rows:
        return []
    firsts = Q()
    for row in rows:
        firsts |= Q(session_id=row["session_id"], created_at=row["first_at"])
    prompts: dict[str, str] = {}
    for session_id, prompt in (
        conversations(caller, "view")
        .filter(firsts)
        .order_by("created_at")
        .values_list("session_id", "prompt")
    ):
        prompts.setdefault(session_id, prompt)
    ids = [row["session_id"] for row in rows]
    titles = dict(
        session_titles(caller).filter(session_id__in=ids).values_list("session_id", "title")
    )
    return [
        SessionSummary(
            session_id=row["session_id"],
            title=titles.get(row["session_id"])
            or default_title(prompts.get(row["session_id"], "")),
            turns=row["turns"],
            last_activity=row["last_activity"],
            started_at=row["first_at"],
        )
        for row in rows
    ]


def session_summary(caller: Caller, session_id: str) -> SessionSummary | None:
    """One of the caller's conversations (None: it has none by that id)."""
    row = (
        conversations(caller, "view")
        .filter(session_id=session_id)
        .aggregate(turns=Count("pk"), last_activity=Max("created_at"), first_at=Min("created_at"))
    )
    if not row["turns"]:
        return None
    return _summaries(caller, [{**row, "session_id": session_id}])[0]


def rename_session(caller: Caller, session_id: str, title: str | None) -> SessionSummary | None:
    """Name one of the caller's conversations (None or "": back to its first
    prompt). None if the caller has no conversation by that id."""
    with transaction.atomic():
        if not conversations(caller, "change").filter(session_id=session_id).exists():
            return None
        owner = title_owner(caller)
        if title:
            SessionTitle.objects.update_or_create(
                **owner, session_id=session_id, defaults={"title": title}
            )
        else:
            SessionTitle.objects.filter(**owner, session_id=session_id).delete()
    return session_summary(caller, session_id)


def forget_session(caller: Caller, session_id: str) -> int:
    """Delete one of the caller's conversations and its title; how many requests went."""
    with transaction.atomic():
        deleted = delete_session(conversations(caller, "delete").in_session(session_id))
        if deleted:
            session_titles(caller).filter(session_id=session_id).delete()
    return deleted


def session_turns(
    caller: Caller, session_id: str
) -> tuple[SessionSummary, list[InferenceRequest]] | None:
    """A conversation of the caller's and its turns, oldest first (None: no such)."""
    turns = list(conversations(caller, "view").in_session(session_id))
    if not turns:
        return None
    titles = session_titles(caller).filter(session_id=session_id)
    title = titles.values_list("title", flat=True).first()
    summary = SessionSummary(
        session_id=session_id,
        title=title or default_title(turns[0].prompt),
        turns=len(turns),
        last_activity=max(turn.created_at for turn in turns),
        started_at=turns[0].created_at,
    )
    return summary, turns


# --- the response cache ---------------------------------------------------------------


def flush_cache() -> dict[str, int]:
    """Retire every cached answer: a new epoch (part of every key), so answers
    still being generated under the old one are never served either."""
    epoch = CacheEpoch.bump()
    return {"epoch": epoch, "entries_removed": InferenceRequest.objects.forget_cached()}


def cache_stats(window_seconds: int = 86_400) -> dict[str, Any]:
    """Live entries, and what the cache did for the requests finished in the window."""
    since = timezone.now() - timedelta(seconds=window_seconds)
    decided: dict[str, tuple[int, int]] = {
        status: (n, tokens or 0)
        for status, n, tokens in InferenceRequest.objects.filter(finished_at__gte=since)
        .exclude(cache_status="")
        .values("cache_status")
        .annotate(n=Count("pk"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .values_list("cache_status", "n", "tokens")
    }

    def count(*statuses: str, of: int = 0) -> int:
        return sum(decided[s][of] for s in statuses if s in decided)

    hits, collapsed = count(CacheStatus.HIT), count(CacheStatus.COLLAPSED)
    misses = count(CacheStatus.MISS, CacheStatus.STORED)
    return {
        "entries": InferenceRequest.objects.filter(cache_expires_at__gt=timezone.now()).count(),
        "hits": hits,
        "misses": misses,
        "collapsed": collapsed,
        "hit_rate": hits / max(hits + misses + collapsed, 1),
        "saved_tokens": count(CacheStatus.HIT, CacheStatus.COLLAPSED, of=1),
        "evictions": 0,  # entries expire; none is pushed out
        "epoch": CacheEpoch.current(),
        "window_seconds": window_seconds,
    }


# --- usage ------------------------------------------------------------------------------

USAGE_GROUPS = ("day", "key", "model")


def usage_report(
    caller: Caller,
    group_by: set[str],
    since: datetime | None = None,
    until: datetime | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """What the caller may see (its own requests; staff: everyone's, or ``key``'s)
    of the requests finished in ``[since, until)`` (default: the last 30 days)."""
    until = until or timezone.now()
    since = since or until - timedelta(days=30)
    requests = caller.requests()
    if key:
        requests = requests.filter(api_key_id=key)
    groups = sorted(group_by)
    rows = _usage_rows(requests, since, until, groups)
    return {"since": since, "until": until, "group_by": groups, "rows": rows}


def _usage_rows(
    requests: InferenceRequestQuerySet, since: datetime, until: datetime, group_by: list[str]
) -> list[dict[str, Any]]:
    """Their tokens and cost (every final status: each consumed what it consumed),
    grouped by day (UTC), key and/or backend + model."""
    columns = {
        "day": TruncDate("finished_at", tzinfo=UTC),
        "key": F("api_key_id"),
        "backend": F("backend_used"),
        "model": F("model_used"),
    }
    wanted = [
        name for name in columns if name in group_by or (name == "backend" and "model" in group_by)
    ]
    rows = (
        requests.filter(finished_at__gte=since, finished_at__lt=until)
        .annotate(**{f"group_{name}": columns[name] for name in wanted})
        .values(*(f"group_{name}" for name in wanted))
        .annotate(
            requests=Count("pk"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost"),
        )
        .order_by(*(f"group_{name}" for name in wanted))
    )
    return [
        {
            **{name: row[f"group_{name}"] for name in wanted},
            "requests": row["requests"],
            "prompt_tokens": row["prompt_tokens"] or 0,
            "completion_tokens": row["completion_tokens"] or 0,
            "cost": row["cost"] or 0,
        }
        for row in rows
    ]
