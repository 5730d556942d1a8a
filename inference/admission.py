"""Admission: every "no" the service says before it does the work, in one place.

Who may call (``inference.auth`` decides, and refuses with a ``Refusal``); how
often (requests per minute per caller); how much at once (requests in flight and
open streams per caller, WebSocket messages per second); and whether the system
can take more (the pending-queue cap).

Every refusal is one type, ``Refusal`` (status, code, message, retry_after,
quota), rendered by one function per transport: REST in
``inference.errors.api_exception_handler``, SSE in ``inference.sse``, the
WebSocket in ``inference.consumers``. Its ``headers()`` are the IETF
``RateLimit-Policy`` / ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers),
OpenAI-style ``x-ratelimit-*`` ones and ``Retry-After``.

Counts are shared by every web process (``inference.counters``: Redis when
scaled). If Redis is unreachable the limits fail open: losing rate limiting for a
minute beats refusing every request.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError
from django.db.models import Count, Max, Q
from django.utils import timezone

from inference import counters, flags, metrics
from inference.models import ACTIVE_STATUSES, InferenceRequest, Status, tier_of, tier_range

if TYPE_CHECKING:
    from inference.auth import Caller

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# Seconds a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER = 5
# The longest Retry-After for a refusal that clears by itself: the OpenAI SDKs
# ignore (or give up on) longer ones, and two of their retries should be useful.
MAX_RETRY_AFTER = 60


@dataclass(frozen=True)
class Quota:
    """One policy's state after a check."""

    policy: str  # "requests" (per minute), "in_flight" or "streams"
    limit: int
    remaining: int
    reset: int  # seconds until the window restarts / a slot may free up
    allowed: bool
    window: int | None = None  # seconds; None for a concurrency policy


def quota_headers(quotas: Iterable[Quota]) -> dict[str, str]:
    quotas = list(quotas)
    if not quotas:
        return {}
    policies = ", ".join(
        f'"{q.policy}";q={q.limit}' + (f";w={q.window}" if q.window else "") for q in quotas
    )
    tightest = min(quotas, key=lambda q: (q.allowed, q.remaining))
    headers = {
        "RateLimit-Policy": policies,
        "RateLimit": f'"{tightest.policy}";r={max(tightest.remaining, 0)};t={tightest.reset}',
    }
    for quota in quotas:
        if quota.policy == "requests":
            headers["x-ratelimit-limit-requests"] = str(quota.limit)
            headers["x-ratelimit-remaining-requests"] = str(max(quota.remaining, 0))
            headers["x-ratelimit-reset-requests"] = f"{quota.reset}s"
    return headers


class Refusal(Exception):
    """The service will not do this now (429, 503: ``retry_after`` says when to
    come back) or at all for this caller (401, 403, 404)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        quota: Quota | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after
        self.quota = quota
        self.param = param  # the request field it is about, if one
        self.extra_headers = headers or {}
        self.details = details or {}  # more members of the error object

    @classmethod
    def from_database(cls, exc: DatabaseError, advice: str = "retry later") -> Refusal:
        """A database error as its client sees it: data the database will not take
        (400, 409: never an outage), or the database out of reach (503, retry)."""
        if isinstance(exc, DataError):
            logger.warning("the database refused the data: %s", exc)
            return cls(400, "invalid_data", "The database cannot store this data.")
        if isinstance(exc, IntegrityError):
            logger.warning("the data conflicts with stored rows: %s", exc)
            return cls(409, "conflict", "This conflicts with stored data; it was not done.")
        logger.warning("database unavailable: %s", exc)
        message = f"The database is unavailable; {advice}."
        return cls(503, "service_unavailable", message, retry_after=DATABASE_RETRY_AFTER)

    def headers(self, quotas: Iterable[Quota] = ()) -> dict[str, str]:
        """Its HTTP headers; ``quotas`` are the call's other quotas (REST)."""
        headers = quota_headers([*quotas, *([self.quota] if self.quota else [])])
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
            headers["retry-after-ms"] = str(self.retry_after * 1000)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
        return {**headers, **self.extra_headers}


# --- calls: who, and how often -----------------------------------------------------


def admit_call(caller: Caller) -> Quota | None:
    """Refuse a caller without access, or over its per-minute rate (a stream or
    a socket opening); else the rate quota (None: unlimited)."""
    if caller.refused is not None:
        raise limit_unauthenticated(caller.ip, caller.refused)
    return count_call(caller)


def limit_unauthenticated(ip: str | None, refusal: Refusal) -> Refusal:
    """The answer to a call without a usable key: ``refusal`` itself (401), or a
    429 once its address has had ``ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE`` such
    calls this minute, so a flood without a key is bounded like one with."""
    limit = settings.ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE
    if refusal.status != 401 or not limit:
        return refusal
    now = time.time()
    try:
        count = counters.store().hit(f"unauthenticated:{ip or 'unknown'}", WINDOW_SECONDS, now)
    except redis.RedisError:
        return refusal
    if count <= limit:
        return refusal
    reset = max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))
    quota = Quota("unauthenticated", limit, 0, reset, False, WINDOW_SECONDS)
    message = f"Too many calls without a valid key from this address; retry in {reset} s."
    return Refusal(429, "rate_limit_exceeded", message, retry_after=reset, quota=quota)


def count_call(caller: Caller) -> Quota | None:
    """Count one call (a REST call, a WebSocket submit) against the caller's
    per-minute rate and refuse it when over; else the quota (None: unlimited)."""
    quota = check_rate(caller)
    if quota is not None and not quota.allowed:
        message = f"Rate limit exceeded: too many requests this minute; retry in {quota.reset} s."
        raise Refusal(429, "rate_limit_exceeded", message, retry_after=quota.reset, quota=quota)
    return quota


def check_rate(caller: Caller) -> Quota | None:
    """Count one request against the caller's per-minute limit (None: unlimited)."""
    limit = caller.limit("requests_per_minute")
    if not limit:
        return None
    now = time.time()
    try:
        count = counters.store().hit(caller.identity, WINDOW_SECONDS, now)
    except redis.RedisError as exc:
        logger.warning("rate limit store unavailable, not limiting: %s", exc)
        return None
    reset = max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))
    return Quota("requests", limit, limit - count, reset, count <= limit, WINDOW_SECONDS)


# --- submissions: can the system and the caller take one more -------------------------


@dataclass(frozen=True)
class Arrival:
    """A request asking to be admitted."""

    request_id: uuid.UUID
    arrived: datetime
    deadline: datetime
    priority: int
    cost: float  # its share of its tier, in virtual seconds (``fair_share_cost``)


def admit_submission(caller: Caller, arrival: Arrival) -> datetime:
    """``admit_submissions`` for one request."""
    return admit_submissions(caller, [arrival])[0]


def admit_submissions(caller: Caller, arrivals: Sequence[Arrival]) -> list[datetime]:
    """Refuse work the system cannot take, all of it or none: a full queue (503; a
    soft cap, counted before the insert), a full tier (429: other tiers still
    admit) or a caller without enough in-flight slots (429; an atomic reservation,
    held until each request finishes or its deadline). Returns each request's
    fair-share stamp (its arrival when fair queueing is off for it, or the store is
    unreachable)."""
    try:
        return _admit_submissions(caller, arrivals)
    except Refusal as refusal:
        metrics.REFUSED.labels(refusal.code).inc()
        raise


def _admit_submissions(caller: Caller, arrivals: Sequence[Arrival]) -> list[datetime]:
    cap = settings.ORCHESTRATOR_MAX_PENDING
    if cap and (pending := pending_count()) + len(arrivals) > cap:
        message = f"The queue is full ({pending} waiting)."
        raise Refusal(503, "queue_full", message, retry_after=backlog_retry_after(pending))
    asking = Counter(tier_of(arrival.priority) for arrival in arrivals)
    for tier, count in asking.items():
        tier_cap = settings.ORCHESTRATOR_QUEUE_MAX_PENDING.get(tier)
        if tier_cap and (waiting := pending_count.in_tier(tier)) + count > tier_cap:
            message = f"The {tier} tier is full ({waiting} waiting); other tiers still admit."
            raise Refusal(429, "queue_full", message, retry_after=backlog_retry_after(waiting))
    quota, stamps = take_places(caller, arrivals)
    if quota is not None and not quota.allowed:
        retry_after = backlog_retry_after(quota.limit)
        message = f"You have {quota.limit} requests in flight at most; wait for some to finish."
        quota = dataclasses.replace(quota, reset=retry_after)
        raise Refusal(429, "too_many_in_flight", message, retry_after=retry_after, quota=quota)
    if stamps is None:
        return [arrival.arrived for arrival in arrivals]
    return [datetime.fromtimestamp(stamp, tz=UTC) for stamp in stamps]


def fair_share_cost(caller: Caller, estimated_tokens: int) -> float:
    """Seconds a request advances its caller's fair-share clock: one quantum plus
    one per ``tokens_per_quantum`` tokens, over the key's weight (0: fair queueing
    is off, and requests go first come, first served).

    The quantum is the time one request takes of the system, as measured (the
    last minute's completions; ``fairness.quantum_seconds`` until there are any):
    a key that asks for less than its share then never runs ahead of the clock,
    so using spare capacity costs it nothing later. The flag is decided for the
    whole fleet, not per key: stamps of keys in and out of it would not compare."""
    if not flags.enabled("fair_queueing"):
        return 0.0
    weight = max(caller.key.fair_share_weight if caller.key else 1, 1)
    per_quantum = settings.ORCHESTRATOR_FAIRNESS_TOKENS_PER_QUANTUM
    per_second = pending_count.completed_per_second()
    quantum = 1 / per_second if per_second else settings.ORCHESTRATOR_FAIRNESS_QUANTUM_SECONDS
    return quantum * (1 + estimated_tokens / per_quantum) / weight


def backlog_retry_after(waiting: int) -> int:
    """Seconds until ``waiting`` requests drain at the last minute's completion rate."""
    per_second = pending_count.completed_per_second()
    return int(min(max(waiting / per_second if per_second else 60, 1), MAX_RETRY_AFTER))


@dataclass(frozen=True)
class Backlog:
    """What waits, per priority: all of it, and those admitted to that priority
    (not aged into it); how fast the system completes work; and per priority the
    latest fair-share stamp it has started (its served frontier)."""

    waiting: dict[int, int]
    admitted: dict[int, int]
    completed_per_second: float
    frontier: dict[int, float]


class PendingCount:
    """Pending requests by priority (and the completion rate), counted at most
    every ``ORCHESTRATOR_PENDING_COUNT_SECONDS`` per process: the queue caps are
    soft, and a COUNT per submit was a tenth of its cost. (Overshoot: about
    submits/s x that many seconds.)"""

    def __init__(self) -> None:
        self.seen: tuple[float, Backlog] = (-1e9, Backlog({}, {}, 0.0, {}))

    def backlog(self) -> Backlog:
        seen_at, backlog = self.seen
        now = time.monotonic()
        if now - seen_at >= settings.ORCHESTRATOR_PENDING_COUNT_SECONDS:
            rows = (
                InferenceRequest.objects.filter(status=Status.PENDING)
                .values_list("priority")
                .annotate(n=Count("pk"), fresh=Count("pk", filter=Q(promoted_at__isnull=True)))
            )
            since = timezone.now() - timedelta(seconds=WINDOW_SECONDS)
            finished = _by_priority(InferenceRequest.objects.filter(finished_at__gte=since))
            running = _by_priority(InferenceRequest.objects.filter(status=Status.PROCESSING))
            frontier = dict(backlog.frontier)  # it only moves forward
            for priority, _, served in [*finished, *running]:
                frontier[priority] = max(frontier.get(priority, 0.0), served.timestamp())
            backlog = Backlog(
                waiting={priority: n for priority, n, _ in rows},
                admitted={priority: fresh for priority, _, fresh in rows},
                completed_per_second=sum(n for _, n, _ in finished) / WINDOW_SECONDS,
                frontier=frontier,
            )
            self.seen = (now, backlog)
        return backlog

    def __call__(self) -> int:
        return sum(self.backlog().waiting.values())

    def in_tier(self, tier: str) -> int:
        """Admitted to ``tier`` and waiting: what its cap counts (a request aged into
        a tier does not fill it)."""
        low, high = tier_range(tier)
        admitted = self.backlog().admitted.items()
        return sum(n for priority, n in admitted if low <= priority <= high)

    def completed_per_second(self) -> float:
        return self.backlog().completed_per_second

    def frontier(self, priority: int) -> float:
        return self.backlog().frontier.get(priority, 0.0)


def _by_priority(rows: Any) -> list[tuple[int, int, datetime]]:
    """(priority, how many, the latest stamp) of ``rows``."""
    grouped = rows.values_list("priority").annotate(n=Count("pk"), top=Max("fair_at"))
    return list(grouped)


pending_count = PendingCount()


def take_places(
    caller: Caller, arrivals: Sequence[Arrival]
) -> tuple[Quota | None, list[float] | None]:
    """Hold one of the caller's in-flight slots for each new request until it
    finishes (or its deadline), and stamp each on the caller's fair-share clock
    for its priority: one atomic step (one round trip to Redis), all or none.
    Slots of finished requests are given back when the caller's slots look full:
    no hook in the worker has to remember to. Returns the slot quota (None:
    unlimited) and the stamps (None: no clock); without Redis, both fail open."""
    limit = caller.limit("max_in_flight")
    now = arrivals[0].arrived.timestamp()
    slots = [
        counters.Slot(caller.identity, str(a.request_id), limit, a.deadline.timestamp())
        for a in arrivals
    ]
    clocks = [
        counters.Clock(
            f"{caller.identity}:{a.priority}", a.cost, pending_count.frontier(a.priority)
        )
        for a in arrivals
    ]
    store = counters.store()
    try:
        held, stamps = store.admit_many(slots, clocks, now)
        if held < 0 and _free_finished(caller.identity):
            held, stamps = store.admit_many(slots, clocks, now)
    except redis.RedisError as exc:
        logger.warning("admission store unavailable, not limiting: %s", exc)
        return None, None
    stamped = stamps if any(a.cost for a in arrivals) else None
    if not limit:
        return None, stamped
    if held < 0:
        return Quota("in_flight", limit, 0, 1, False), stamped
    return Quota("in_flight", limit, limit - held, 0, True), stamped


def release_in_flight(caller: Caller, request_ids: Sequence[uuid.UUID]) -> None:
    """Give slots back (a submit that did not store its rows)."""
    try:
        counters.store().free_slots(caller.identity, [str(pk) for pk in request_ids])
    except redis.RedisError:
        pass  # the slots expire with the requests' deadlines


def _free_finished(bucket: str) -> bool:
    """Drop the slots of requests that are no longer pending or processing.
    Slots whose row is not committed yet are kept (another process is storing it)."""
    members = counters.store().slots(bucket)
    ids = [uuid.UUID(member) for member in members]
    finished = (
        InferenceRequest.objects.filter(pk__in=ids)
        .exclude(status__in=ACTIVE_STATUSES)
        .values_list("pk", flat=True)
    )
    done = [str(pk) for pk in finished]
    counters.store().free_slots(bucket, done)
    return bool(done)


# --- connections: open streams and WebSocket messages ------------------------------------


class OpenStreams:
    """Streams (SSE and WebSockets) each caller holds open in this process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def open(self, caller: Caller) -> None:
        limit = settings.ORCHESTRATOR_MAX_STREAMS
        held = self.counts.get(caller.identity, 0)
        if limit and not caller.staff and held >= limit:
            message = f"Too many open streams ({held}, the limit); close one first."
            quota = Quota("streams", limit, 0, 1, allowed=False)
            raise Refusal(429, "too_many_streams", message, retry_after=1, quota=quota)
        self.counts[caller.identity] = held + 1

    def close(self, caller: Caller) -> None:
        held = self.counts.get(caller.identity, 0) - 1
        if held > 0:
            self.counts[caller.identity] = held
        else:
            self.counts.pop(caller.identity, None)


open_streams = OpenStreams()


class MessageRate:
    """A WebSocket's messages per second: ``rate`` a second, in bursts of up to
    ``rate`` (a token bucket; 0: unlimited)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.updated = time.monotonic()

    def admit(self) -> None:
        """Take one message's token, or refuse the message."""
        if not self.rate:
            return
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            message = f"More than {self.rate} messages per second; this one was dropped."
            raise Refusal(429, "rate_limit_exceeded", message, retry_after=1)
        self.tokens -= 1


def reset() -> None:
    """Forget this process's admission state (``orchestrator_site.state.reset``)."""
    counters.reset()
    pending_count.seen = (-1e9, Backlog({}, {}, 0.0, {}))
    open_streams.counts.clear()
