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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import redis
from django.conf import settings


class Store(Protocol):
    def hit(self, bucket: str, window: int, now: float) -> int:
        """Count one hit in ``bucket``'s current window; the count so far."""

    def admit(self, slot: Slot, clock: Clock, now: float) -> tuple[int, float]:
        """``admit_many`` for one request."""

    def admit_many(
        self, slots: Sequence[Slot], clocks: Sequence[Clock], now: float
    ) -> tuple[int, list[float]]:
        """At once, for requests of one caller (``slots`` share a bucket and a
        limit): hold every slot until it expires if they all fit under the limit
        (dropping expired ones first; limit 0: none to hold) and, if held, stamp
        each request on its clock in order (cost 0: no clock, the stamp is
        ``now``). Returns (slots held after, or -1 when they do not all fit; the
        requests' stamps)."""

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


class AdmitsOne:
    def admit(self, slot: Slot, clock: Clock, now: float) -> tuple[int, float]:
        held, stamps = self.admit_many([slot], [clock], now)  # type: ignore[attr-defined]
        return held, stamps[0]


class MemoryStore(AdmitsOne):
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

    def _take_slots(self, slots: Sequence[Slot], now: float) -> int:
        held = self.held.setdefault(slots[0].bucket, {})
        for name in [name for name, until in held.items() if until <= now]:
            del held[name]
        if len(held) + len(slots) > slots[0].limit:
            return -1
        held.update((slot.member, slot.expires) for slot in slots)
        return len(held)

    def admit_many(
        self, slots: Sequence[Slot], clocks: Sequence[Clock], now: float
    ) -> tuple[int, list[float]]:
        with self.lock:
            held = 0
            if slots[0].limit and (held := self._take_slots(slots, now)) < 0:
                return -1, [now] * len(clocks)
            return held, [self._stamp(clock, now) for clock in clocks]

    def _stamp(self, clock: Clock, now: float) -> float:
        if not clock.cost:
            return now
        stamp = max(now, clock.floor, self.clocks.get(clock.bucket, now)) + clock.cost
        self.clocks[clock.bucket] = stamp
        if len(self.clocks) > MAX_CLOCKS:  # a clock behind now is as good as none
            self.clocks = {b: t for b, t in self.clocks.items() if t > now}
            if len(self.clocks) > MAX_CLOCKS:  # still: forget them (fair share resets)
                self.clocks.clear()
        return stamp

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
# KEYS[1] in-flight sorted set, KEYS[1 + i] request i's fair-share clock; ARGV:
# now, limit (0: none), ttl, then per request: member, expires, cost (0: no
# clock), floor. Stamps are returned as strings: Redis would truncate a Lua
# number to an integer.
ADMIT_SCRIPT = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local n = #KEYS - 1
local held = 0
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  held = redis.call('ZCARD', KEYS[1])
  if held + n > limit then return {-1} end
  for i = 1, n do
    local at = 3 + (i - 1) * 4
    redis.call('ZADD', KEYS[1], ARGV[at + 2], ARGV[at + 1])
  end
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
  end
  held = held + n
end
local result = {held}
for i = 1, n do
  local at = 3 + (i - 1) * 4
  local cost = tonumber(ARGV[at + 3])
  local stamp = now
  if cost > 0 then
    local last = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
    stamp = math.max(now, tonumber(ARGV[at + 4]), last) + cost
    redis.call('SET', KEYS[i + 1], string.format('%.6f', stamp), 'EX', math.ceil(stamp - now) + 1)
  end
  result[i + 1] = string.format('%.6f', stamp)
end
return result
"""


class RedisStore(AdmitsOne):
    """Scaled mode: every web process sees the same counters."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.hit_script = self.redis.register_script(HIT_SCRIPT)
        self.admit_script = self.redis.register_script(ADMIT_SCRIPT)

    def hit(self, bucket: str, window: int, now: float) -> int:
        key = f"ratelimit:{bucket}:{int(now // window)}"
        return int(self.hit_script(keys=[key], args=[window + 1]))

    def admit_many(
        self, slots: Sequence[Slot], clocks: Sequence[Clock], now: float
    ) -> tuple[int, list[float]]:
        limit = slots[0].limit
        if not limit and not any(clock.cost for clock in clocks):
            return 0, [now] * len(clocks)  # nothing to count: no round trip
        ttl = max(1, math.ceil(max(slot.expires for slot in slots) - now))
        keys = [f"inflight:{slots[0].bucket}", *(f"fair:{clock.bucket}" for clock in clocks)]
        args: list[float | int | str] = [now, limit, ttl]
        for slot, clock in zip(slots, clocks, strict=True):
            args += [slot.member, slot.expires, clock.cost, clock.floor]
        held, *stamps = self.admit_script(keys=keys, args=args)
        if int(held) < 0:
            return -1, [now] * len(clocks)
        return int(held), [float(stamp) for stamp in stamps]

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
