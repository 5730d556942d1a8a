"""ASGI entry point: HTTP (streaming consumers, then Django), WebSocket, channels.

In embedded mode the pipeline engine lives in this process too (see
``pipeline.host.EmbeddedPipeline``).
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
django.setup(set_prefix=False)

# Django's handler with hop-free middleware (what get_asgi_application() builds, but).
from orchestrator_site.middleware import ASGIHandler  # noqa: E402

django_asgi_app = ASGIHandler()

# Imports that touch models come after Django is set up.
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

from inference.metrics_http import HttpMetrics  # noqa: E402
from inference.routing import http_urlpatterns, websocket_urlpatterns  # noqa: E402
from orchestrator_site.logs import RequestIdMiddleware  # noqa: E402
from pipeline.consumers import PipelineConsumer  # noqa: E402
from pipeline.host import EmbeddedPipeline  # noqa: E402

# Static files (admin, API docs, chat page) are served by the app itself, so the
# scaled mode needs no collectstatic step; put a CDN or proxy in front at scale.
static_and_django = ASGIStaticFilesHandler(django_asgi_app)

application = EmbeddedPipeline(
    ProtocolTypeRouter(
        {
            "http": RequestIdMiddleware(
                HttpMetrics(
                    URLRouter([*http_urlpatterns, re_path(r"", static_and_django)])  # type: ignore[arg-type]
                )
            ),
            # Browsers always send Origin: it must name one of ALLOWED_HOSTS.
            "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
            "channel": ChannelNameRouter({settings.PIPELINE_CHANNEL: PipelineConsumer.as_asgi()}),
        }
    ),
    enabled=settings.ORCHESTRATOR_WORKER_MODE == "embedded",
)
