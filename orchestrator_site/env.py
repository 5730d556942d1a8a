"""Small typed readers for environment variables.

Only settings.py calls these: application code reads ``django.conf.settings``.
A malformed value fails with the variable's name in the message: at once, or —
while settings.py is read (``collect_problems``) — kept in ``PROBLEMS`` with the default
standing in, so that the system check reports every malformed variable together
instead of a traceback for the first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Malformed variables seen while collecting (orchestrator_site.checks reports them).
PROBLEMS: list[str] = []
_collecting = False


def collect_problems(on: bool = True) -> None:
    """From now on (settings.py, until its end), keep malformed values' problems in
    PROBLEMS instead of raising."""
    global _collecting
    _collecting = on


def _malformed(message: str, default: T) -> T:
    if not _collecting:
        raise ImproperlyConfigured(message)
    PROBLEMS.append(message)
    return default


def env_str(name: str, default: str = "") -> str:
    """A string from ``NAME``, or from the file named by ``NAME_FILE`` (secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            return _malformed(f"{name}_FILE={file_path!r} cannot be read ({exc.strerror})", default)
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return _malformed(f"{name}={raw!r} is not a boolean (use true/false)", default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return _malformed(f"{name}={raw!r} is not an integer", default)


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        return _malformed(f"{name}={raw!r} is not a number", default)


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]
