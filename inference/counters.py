"""Rate limits per caller (an API key, or the client IP when anonymous), shared by
every process: requests per minute and requests in flight.

Two stores keep one contract: Redis in the scaled mode, where each check is one
Lua script and so atomic across web processes, and process memory in the
embedded mode (one process, a lock). If Redis is unreachable the limits fail
open: losing rate limiting for a minute beats refusing every request.

Every decision is a ``Quota``; ``quota_headers`` turns them into the IETF
``RateLimit-Policy`` / ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers)
and OpenAI-style ``x-ratelimit-*`` ones.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from inference.auth import Caller, caller_of
from inference.models import ACTIVE_STATUSES, InferenceRequest

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Quota:
    """One policy's state after a check."""

    policy: str  # "requests" (per minute) or "in_flight"
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


class Store(Protocol):
    def hit(self, bucket: str, window: int, now: float) -> int:
        """Count one hit in ``bucket``'s current window; the count so far."""

    def take_slot(self, bucket: str, member: str, limit: int, expires: float, now: float) -> int:
        """Hold a slot until ``expires`` if fewer than ``limit`` are held (dropping
        expired ones first): the number held after, or -1 when full."""

    def slots(self, bucket: str) -> list[str]: ...

    def free_slots(self, bucket: str, members: list[str]) -> None: ...


class MemoryStore:
    """Embedded mode: one process, so a lock makes each check atomic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.windows: dict[str, tuple[int, int]] = {}
        self.held: dict[str, dict[str, float]] = {}

    def hit(self, bucket: str, window: int, now: float) -> int:
        current = int(now // window)
        with self.lock:
            started, count = self.windows.get(bucket, (current, 0))
            count = count + 1 if started == current else 1
            self.windows[bucket] = (current, count)
            return count

    def take_slot(self, bucket: str, member: str, limit: int, expires: float, now: float) -> int:
        with self.lock:
            held = self.held.setdefault(bucket, {})
            for name in [name for name, until in held.items() if until <= now]:
                del held[name]
            if len(held) >= limit:
                return -1
            held[member] = expires
            return len(held)

    def slots(self, bucket: str) -> list[str]:
        with self.lock:
            return list(self.held.get(bucket, {}))

    def free_slots(self, bucket: str, members: list[str]) -> None:
        with self.lock:
            held = self.held.get(bucket, {})
            for member in members:
                held.pop(member, None)


# KEYS[1] window counter; ARGV[1] its lifetime in seconds.
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
# KEYS[1] sorted set member -> expiry; ARGV: now, limit, expires, member, ttl.
TAKE_SLOT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return held + 1
"""


class RedisStore:
    """Scaled mode: every web process sees the same counters."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.hit_script = self.redis.register_script(HIT_SCRIPT)
        self.take_script = self.redis.register_script(TAKE_SLOT_SCRIPT)

    def hit(self, bucket: str, window: int, now: float) -> int:
        key = f"ratelimit:{bucket}:{int(now // window)}"
        return int(self.hit_script(keys=[key], args=[window + 1]))

    def take_slot(self, bucket: str, member: str, limit: int, expires: float, now: float) -> int:
        ttl = max(1, math.ceil(expires - now))
        args: list[float | int | str] = [now, limit, expires, member, ttl]
        return int(self.take_script(keys=[f"inflight:{bucket}"], args=args))

    def slots(self, bucket: str) -> list[str]:
        members: list[bytes] = self.redis.zrange(f"inflight:{bucket}", 0, -1)  # type: ignore[assignment]
        return [member.decode() for member in members]

    def free_slots(self, bucket: str, members: list[str]) -> None:
        if members:
            self.redis.zrem(f"inflight:{bucket}", *members)


@cache
def store() -> Store:
    return RedisStore(settings.REDIS_URL) if settings.REDIS_URL else MemoryStore()


def reset() -> None:
    """Forget the store (tests; a settings change)."""
    store.cache_clear()


def check_rate(caller: Caller) -> Quota | None:
    """Count one request against the caller's per-minute limit (None: unlimited)."""
    limit = caller.limit("requests_per_minute")
    if not limit:
        return None
    now = time.time()
    try:
        count = store().hit(caller.identity, WINDOW_SECONDS, now)
    except redis.RedisError as exc:
        logger.warning("rate limit store unavailable, not limiting: %s", exc)
        return None
    reset = max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))
    return Quota("requests", limit, limit - count, reset, count <= limit, WINDOW_SECONDS)


def take_in_flight(caller: Caller, request_id: uuid.UUID, expires: float) -> Quota | None:
    """Hold one of the caller's in-flight slots for a new request until it finishes
    (or its deadline, ``expires``). Slots of finished requests are given back when
    the caller's slots look full: no hook in the worker has to remember to."""
    limit = caller.limit("max_in_flight")
    if not limit:
        return None
    now = time.time()
    try:
        held = store().take_slot(caller.identity, str(request_id), limit, expires, now)
        if held < 0 and _free_finished(caller.identity):
            held = store().take_slot(caller.identity, str(request_id), limit, expires, now)
    except redis.RedisError as exc:
        logger.warning("rate limit store unavailable, not limiting: %s", exc)
        return None
    if held < 0:
        return Quota("in_flight", limit, 0, 1, False)
    return Quota("in_flight", limit, limit - held, 0, True)


def release_in_flight(caller: Caller, request_id: uuid.UUID) -> None:
    """Give a slot back (a submit that did not store its row)."""
    try:
        store().free_slots(caller.identity, [str(request_id)])
    except redis.RedisError:
        pass  # the slot expires with the request's deadline


def _free_finished(bucket: str) -> bool:
    """Drop the slots of requests that are no longer pending or processing.
    Slots whose row is not committed yet are kept (another process is storing it)."""
    members = store().slots(bucket)
    ids = [uuid.UUID(member) for member in members]
    finished = (
        InferenceRequest.objects.filter(pk__in=ids)
        .exclude(status__in=ACTIVE_STATUSES)
        .values_list("pk", flat=True)
    )
    done = [str(pk) for pk in finished]
    store().free_slots(bucket, done)
    return bool(done)


# --- REST ---------------------------------------------------------------------------


class CallerRateThrottle(BaseThrottle):
    """Requests per minute for every API call; the quota rides on the request so
    that the response (2xx or 429) can carry the RateLimit headers."""

    def allow_request(self, request: Request, view: Any) -> bool:
        quota = check_rate(caller_of(request))
        setattr(request, "rate_quotas", [quota] if quota else [])  # noqa: B010
        self.quota = quota
        return quota is None or quota.allowed

    def wait(self) -> float | None:
        return self.quota.reset if self.quota else None


class RateLimitHeadersMixin:
    """Adds the caller's RateLimit headers to every response of an API view."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        for name, value in quota_headers(getattr(request, "rate_quotas", ())).items():
            response[name] = value
        return response
