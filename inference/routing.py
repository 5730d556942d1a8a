"""ASGI routes served by Channels consumers (ahead of Django's HTTP handler)."""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from django.urls import path, re_path

from inference.consumers import (
    DashboardFeedConsumer,
    InferenceSocketConsumer,
    NotFoundSocketConsumer,
    StreamConsumer,
)
from inference.hosts import AllowedHosts
from inference.openai_views import ChatCompletionsConsumer

# SSE is a consumer, not a Django view: at 500 streams a streaming view's first
# bytes came ~1 s late here, the consumer's in 24 ms (DESIGN §12).
# The session cookie identifies staff (chat page, dashboard); clients use keys.
http_urlpatterns = [
    path(
        "api/v1/stream/<str:request_id>",
        AllowedHosts(AuthMiddlewareStack(StreamConsumer.as_asgi())),  # type: ignore[arg-type]
    ),
    # Keys only (no session middleware): a cookie would make it a CSRF target.
    path("v1/chat/completions", AllowedHosts(ChatCompletionsConsumer.as_asgi())),  # type: ignore[arg-type]
    path(
        "dashboard/feed",
        AllowedHosts(AuthMiddlewareStack(DashboardFeedConsumer.as_asgi())),  # type: ignore[arg-type]
    ),
]

websocket_urlpatterns = [
    path("api/v1/ws", AuthMiddlewareStack(InferenceSocketConsumer.as_asgi())),
    re_path(r"", NotFoundSocketConsumer.as_asgi()),
]
