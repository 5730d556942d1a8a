"""ASGI entry point: what runs, in order, for each kind of connection.

- HTTP: a chunked body read to its length (``guards.ChunkedBody``) -> request-id
  logging -> HTTP metrics -> the streaming consumers (SSE
  stream, dashboard feed), else static files, else Django (its middleware chain
  built by ``orchestrator_site.middleware.ASGIHandler``).
- WebSocket: Origin must be this site (``inference.hosts.SameOrigin``) -> the socket.
- Lifespan: starts and stops the embedded pipeline engine (embedded mode only;
  scaled mode runs it in ``manage.py run_pipeline`` processes).
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
django.setup(set_prefix=False)

# Imports that touch models come after Django is set up.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

from inference.hosts import SameOrigin  # noqa: E402
from inference.logs import RequestIdMiddleware  # noqa: E402
from inference.metrics_http import HttpMetrics  # noqa: E402
from inference.routing import http_urlpatterns, websocket_urlpatterns  # noqa: E402
from orchestrator_site.guards import ChunkedBody  # noqa: E402
from orchestrator_site.middleware import ASGIHandler  # noqa: E402
from pipeline.host import EmbeddedPipeline  # noqa: E402

# Static files (admin, API docs, chat page) are served by the app itself, so the
# scaled mode needs no collectstatic step; put a CDN or proxy in front at scale.
django_app = ASGIStaticFilesHandler(ASGIHandler())

# The embedded pipeline is the outermost layer: ``orchestrator_site.server``
# (runserver) starts it at boot through this name.
application = EmbeddedPipeline(
    ProtocolTypeRouter(
        {
            "http": ChunkedBody(
                RequestIdMiddleware(
                    HttpMetrics(URLRouter([*http_urlpatterns, re_path(r"", django_app)]))  # type: ignore[arg-type]
                )
            ),
            # Browsers always send Origin: it must be this site (or a trusted origin).
            "websocket": SameOrigin(URLRouter(websocket_urlpatterns)),
        }
    ),
    enabled=settings.ORCHESTRATOR_WORKER_MODE == "embedded",
)
