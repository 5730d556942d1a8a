"""What this process keeps in memory between requests, forgotten in one place.

Built objects that read settings once (backends, stages, the counter store) or
belong to one event loop (channel layers, the doorbell's timer), and per-process
counts (circuit breakers, open streams, the cached pending count). Tests call
``reset`` around each test; anything that changes settings at run time must too.
"""

from __future__ import annotations

from channels.layers import channel_layers

from inference import admission, auth, dashboard, events, flags, services
from inference.models import DocumentChunk
from pipeline.backends import reset_backends
from pipeline.resilience import reset_breakers
from pipeline.stages import configured_stages


def reset() -> None:
    channel_layers.backends.clear()
    events.reset()
    admission.reset()
    auth.reset()
    dashboard.top_keys.counted = None
    flags.invalidate()
    reset_backends()
    reset_breakers()
    configured_stages.cache_clear()
    DocumentChunk.objects.forget()
    services.submit_group = services.SubmitGroup()
