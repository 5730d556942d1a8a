"""Counters every web process shares, for admission: hits per time window, held
slots, and each key's fair-share clock per priority.

Two stores keep one contract: Redis in the scaled mode, where each operation is
one Lua script and so atomic across processes, and process memory in the
embedded mode (one process, a lock). Callers decide what a ``redis.RedisError``
means (the limits fail open).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import redis
from django.conf import settings


class Store(Protocol):
    def hit(self, bucket: str, window: int, now: float) -> int:
        """Count one hit in ``bucket``'s current window; the count so far."""

    def admit(self, slot: Slot, clock: Clock, now: float) -> tuple[int, float]:
        """At once: hold ``slot`` until it expires if fewer than its limit are held
        (dropping expired ones first; limit 0: none to hold) and, if held, stamp a
        request on ``clock`` (cost 0: no clock, the stamp is ``now``). Returns
        (slots held after, or -1 when full; the request's stamp)."""

    def slots(self, bucket: str) -> list[str]: ...

    def free_slots(self, bucket: str, members: list[str]) -> None: ...


# Fair-share clocks the memory store keeps before it drops those already past.
MAX_CLOCKS = 10_000


@dataclass(frozen=True)
class Slot:
    """An in-flight slot to hold: ``member`` in ``bucket`` until ``expires``."""

    bucket: str
    member: str
    limit: int
    expires: float


@dataclass(frozen=True)
class Clock:
    """A fair-share clock: a request's stamp is ``max(floor, now, last stamp) +
    cost``, and becomes the last. The lift means an idle clock cannot bank credit;
    ``floor`` is the stamp the system has served up to (a clock behind it is as
    good as idle, however it got there)."""

    bucket: str
    cost: float
    floor: float = 0.0


class MemoryStore:
    """Embedded mode: one process, so a lock makes each check atomic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.windows: dict[str, tuple[int, int]] = {}
        self.held: dict[str, dict[str, float]] = {}
        self.clocks: dict[str, float] = {}

    def hit(self, bucket: str, window: int, now: float) -> int:
        current = int(now // window)
        with self.lock:
            started, count = self.windows.get(bucket, (current, 0))
            count = count + 1 if started == current else 1
            self.windows[bucket] = (current, count)
            return count

    def _take_slot(self, slot: Slot, now: float) -> int:
        held = self.held.setdefault(slot.bucket, {})
        for name in [name for name, until in held.items() if until <= now]:
            del held[name]
        if len(held) >= slot.limit:
            return -1
        held[slot.member] = slot.expires
        return len(held)

    def admit(self, slot: Slot, clock: Clock, now: float) -> tuple[int, float]:
        with self.lock:
            held = 0
            if slot.limit and (held := self._take_slot(slot, now)) < 0:
                return -1, now
            if not clock.cost:
                return held, now
            stamp = max(now, clock.floor, self.clocks.get(clock.bucket, now)) + clock.cost
            self.clocks[clock.bucket] = stamp
            if len(self.clocks) > MAX_CLOCKS:  # a clock behind now is as good as none
                self.clocks = {b: t for b, t in self.clocks.items() if t > now}
                if len(self.clocks) > MAX_CLOCKS:  # still: forget them (fair share resets)
                    self.clocks.clear()
            return held, stamp

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
# KEYS[1] in-flight sorted set, KEYS[2] fair-share clock; ARGV: now, limit (0:
# none), expires, member, ttl, cost (0: no clock), floor. The stamp is returned as a
# string: Redis would truncate a Lua number to an integer.
ADMIT_SCRIPT = """
local now = tonumber(ARGV[1])
local held = 0
if tonumber(ARGV[2]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  held = redis.call('ZCARD', KEYS[1])
  if held >= tonumber(ARGV[2]) then return {-1, ARGV[1]} end
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then
    redis.call('EXPIRE', KEYS[1], ARGV[5])
  end
  held = held + 1
end
local stamp = now
if tonumber(ARGV[6]) > 0 then
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  stamp = math.max(now, tonumber(ARGV[7]), last) + tonumber(ARGV[6])
  redis.call('SET', KEYS[2], string.format('%.6f', stamp), 'EX', math.ceil(stamp - now) + 1)
end
return {held, string.format('%.6f', stamp)}
"""


class RedisStore:
    """Scaled mode: every web process sees the same counters."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.hit_script = self.redis.register_script(HIT_SCRIPT)
        self.admit_script = self.redis.register_script(ADMIT_SCRIPT)

    def hit(self, bucket: str, window: int, now: float) -> int:
        key = f"ratelimit:{bucket}:{int(now // window)}"
        return int(self.hit_script(keys=[key], args=[window + 1]))

    def admit(self, slot: Slot, clock: Clock, now: float) -> tuple[int, float]:
        if not slot.limit and not clock.cost:
            return 0, now  # nothing to count: no round trip
        ttl = max(1, math.ceil(slot.expires - now))
        keys = [f"inflight:{slot.bucket}", f"fair:{clock.bucket}"]
        args: list[float | int | str] = [
            now,
            slot.limit,
            slot.expires,
            slot.member,
            ttl,
            clock.cost,
            clock.floor,
        ]
        held, stamp = self.admit_script(keys=keys, args=args)
        return int(held), float(stamp)

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
