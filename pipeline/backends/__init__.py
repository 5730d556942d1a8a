"""Model backends: one interface, registered by name in settings.

``settings.ORCHESTRATOR_BACKENDS`` maps a name to ``{"class": dotted path,
"options": {...}}``; :func:`get_backend` builds each once per process.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from inference.models import backend_names
from pipeline.backends.base import Backend, BackendError, GenerationParams, Usage

__all__ = [
    "Backend",
    "BackendError",
    "GenerationParams",
    "Usage",
    "backend_names",
    "fallback_chain",
    "get_backend",
]


@cache
def _build(name: str) -> Backend:
    spec = settings.ORCHESTRATOR_BACKENDS[name]
    backend_class = import_string(spec["class"])
    return backend_class(name=name, **spec.get("options", {}))


def get_backend(name: str | None = None) -> Backend:
    """The configured backend called ``name`` (the default one if None)."""
    name = name or settings.ORCHESTRATOR_DEFAULT_BACKEND
    if name not in settings.ORCHESTRATOR_BACKENDS:
        raise KeyError(f"unknown backend {name!r}; configured: {backend_names()}")
    return _build(name)


def fallback_chain(name: str | None = None) -> list[Backend]:
    """The named backend, then its configured ``fallback`` backends in order."""
    primary = get_backend(name)
    fallbacks = settings.ORCHESTRATOR_BACKENDS[primary.name].get("fallback", [])
    return [primary, *(get_backend(other) for other in fallbacks)]


def reset_backends() -> None:
    """Forget built backends (tests that change settings call this)."""
    _build.cache_clear()
