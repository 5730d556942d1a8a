"""Feature flags: switches an operator flips on a running fleet.

A flag's default comes from the configuration (``[features]``); a ``FeatureFlag``
row, edited in the admin, overrides it: on or off, and for what percent of API
keys (a key's bucket is a hash of the flag and its prefix, so its experience is
stable while the percent grows). Each process holds a snapshot of the rows,
re-read every ``features.refresh_seconds`` and at once when the admin announces a
change on the channel layer (best effort: the refresh catches a lost one).
Checking a flag is a dict lookup. A flag turned off affects new decisions only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from inference.models import FeatureFlag


@dataclass(frozen=True)
class State:
    enabled: bool
    percent: int = 100


class Snapshot:
    def __init__(self) -> None:
        self.rows: dict[str, State] = {}
        self.read_at = -1e9

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.read_at >= settings.ORCHESTRATOR_FEATURES_REFRESH_SECONDS

    def refresh(self) -> None:
        rows = FeatureFlag.objects.values_list("name", "enabled", "percent")
        self.rows = {name: State(enabled, percent) for name, enabled, percent in rows}
        self.read_at = time.monotonic()

    def state(self, name: str) -> State:
        default = settings.ORCHESTRATOR_FEATURES.get(name)
        if default is None:
            raise KeyError(f"no feature flag {name!r}; known: {sorted(names())}")
        return self.rows.get(name, State(default))


snapshot = Snapshot()


def names() -> list[str]:
    return sorted(settings.ORCHESTRATOR_FEATURES)


def bucket(name: str, key_prefix: str | None) -> int:
    """0-99, stable for a flag and a key."""
    digest = hashlib.sha256(f"{name}:{key_prefix or ''}".encode()).hexdigest()
    return int(digest[:8], 16) % 100


def decide(state: State, name: str, key_prefix: str | None) -> bool:
    return state.enabled and (state.percent >= 100 or bucket(name, key_prefix) < state.percent)


def enabled(name: str, key_prefix: str | None = None) -> bool:
    """For sync code (it may read the table)."""
    if snapshot.stale:
        snapshot.refresh()
    return decide(snapshot.state(name), name, key_prefix)


async def aenabled(name: str, key_prefix: str | None = None) -> bool:
    """For async code: the table is read in a thread."""
    if snapshot.stale:
        await database_sync_to_async(snapshot.refresh)()
    return decide(snapshot.state(name), name, key_prefix)


def invalidate() -> None:
    """Re-read the table on the next check (a change was announced)."""
    snapshot.read_at = -1e9
