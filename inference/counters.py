"""Counters every web process shares, for the admission limits: hits per time
window and held slots.

Two stores keep one contract: Redis in the scaled mode, where each operation is
one Lua script and so atomic across processes, and process memory in the
embedded mode (one process, a lock). Callers decide what a ``redis.RedisError``
means (the limits fail open).
"""

from __future__ import annotations

import math
import threading
from functools import cache
from typing import Protocol

import redis
from django.conf import settings


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
    """Forget the store (a settings change; ``orchestrator_site.state.reset``)."""
    store.cache_clear()
