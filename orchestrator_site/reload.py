"""Hot reload: a running process (web or worker) re-reads its configuration on
SIGHUP and when the file changes, and takes the new values of the reloadable keys.

The file is polled every ``config.reload_interval_seconds`` by its ``stat`` (inode,
size, mtime, following symlinks), so a Kubernetes ConfigMap swapped by rename of its
directory's link is seen like an edit. A reload that fails validation keeps the
current configuration and counts ``orchestrator_config_reloads_total{result="invalid"}``;
a changed restart-only key is logged and raises ``orchestrator_config_restart_required``
to 1, its value unchanged. Environment variables cannot change in a running
process, so what they set stays. Nothing here is per request: application code
reads ``django.conf.settings`` as always, and the reloader rewrites those settings.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, cast

from django.conf import settings
from pydantic import BaseModel

from inference import metrics
from orchestrator_site.config import KEYS, Key, Loaded, OrchestratorConfig, load, value_at
from pipeline.backends import reset_backends

logger = logging.getLogger(__name__)


def replace_at(model: BaseModel, path: tuple[str, ...], value: Any) -> BaseModel:
    """A copy of a frozen model with the value at ``path`` replaced."""
    if len(path) == 1:
        return model.model_copy(update={path[0]: value})
    inner = replace_at(getattr(model, path[0]), path[1:], value)
    return model.model_copy(update={path[0]: inner})


class Reloader:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen = self._stat()

    @property
    def current(self) -> Loaded:
        return settings.ORCHESTRATOR_CONFIGURATION

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.current.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def poll(self) -> str:
        """Reload if the file changed since it was last read."""
        seen = self._stat()
        if seen == self.seen:
            return "unchanged"
        self.seen = seen
        return self.reload()

    def reload(self) -> str:
        """Read, validate and apply; ``ok``, ``invalid`` or ``unchanged``."""
        with self.lock:
            self.seen = self._stat()
            new = load(self.current.path)
            if new.errors:
                logger.error(
                    "configuration reload rejected, keeping the current one: %s",
                    "; ".join(new.errors),
                )
                metrics.CONFIG_RELOADS.labels("invalid").inc()
                return "invalid"
            changed = [k for k in KEYS.values() if self._differs(new, k)]
            if not changed:
                return "unchanged"
            self._apply(new, [k for k in changed if k.reload])
            restart = [k.dotted for k in changed if not k.reload]
            if restart:
                logger.warning(
                    "configuration changed keys that need a restart: %s", ", ".join(restart)
                )
                metrics.CONFIG_RESTART_REQUIRED.set(1)
            metrics.CONFIG_RELOADS.labels("ok").inc()
            return "ok"

    def _differs(self, new: Loaded, known: Key) -> bool:
        return value_at(new.config, known.path) != value_at(self.current.config, known.path)

    def _apply(self, new: Loaded, keys: list[Key]) -> None:
        config: BaseModel = self.current.config
        sources = dict(self.current.sources)
        for known in keys:
            config = replace_at(config, known.path, value_at(new.config, known.path))
            sources[known.dotted] = new.sources.get(known.dotted, "default")
        effective = Loaded(
            cast(OrchestratorConfig, config),
            sources,
            [],
            self.current.unknown_env,
            self.current.path,
        )
        values = effective.settings(debug=settings.DEBUG, redis_url=settings.REDIS_URL)
        for name in {k.setting for k in keys} | {"ORCHESTRATOR_BACKENDS", "ORCHESTRATOR_FEATURES"}:
            setattr(settings, name, values[name])
        settings.ORCHESTRATOR_CONFIGURATION = effective
        metrics.CONFIG_INFO.info({"hash": effective.hash})
        if any(k.path[0] == "models" for k in keys):
            reset_backends()  # new requests get backends built with the new options
        logger.info("configuration reloaded: %s", ", ".join(k.dotted for k in keys))


def watch() -> Reloader | None:
    """Follow the configuration file in this process: a daemon thread polls it,
    and SIGHUP wakes that thread to reload at once (the handler only sets an
    event: the work never runs inside a signal handler). Nothing to follow
    without a file."""
    loaded: Loaded = settings.ORCHESTRATOR_CONFIGURATION
    metrics.CONFIG_INFO.info({"hash": loaded.hash})
    if not loaded.path:
        return None
    reloader, wake = Reloader(), threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: wake.set())
    interval = loaded.config.config.reload_interval_seconds
    threading.Thread(target=_follow, args=(reloader, wake, interval), daemon=True).start()
    return reloader


def _follow(reloader: Reloader, wake: threading.Event, interval: float) -> None:
    while True:
        woken = wake.wait(interval if interval > 0 else None)
        wake.clear()
        try:
            reloader.reload() if woken else reloader.poll()
        except Exception:  # a reload must never take the process down
            logger.exception("configuration reload failed")
