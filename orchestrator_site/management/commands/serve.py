"""``manage.py serve``: the production web server — uvicorn (uvloop, httptools,
wsproto), no autoreload, no static handler beyond the app's own.

``runserver`` stays daphne (Channels' development server). uvicorn serves the
same ASGI application with 10-20% less CPU per request and ~15% less memory per
idle WebSocket (``make bench``, scenarios a and d). Both close WebSockets with
1012 on shutdown and 1009 on an oversized message; the embedded engine starts
and stops with the ASGI lifespan (``pipeline.host.EmbeddedPipeline``).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from orchestrator_site.asgi import application
from orchestrator_site.guards import GuardedHttpToolsProtocol

STREAM_SHUTDOWN_SECONDS = 2


class Command(BaseCommand):
    help = "Serve the ASGI application with uvicorn (HTTP, SSE, WebSocket)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--proxy-headers",
            action="store_true",
            help=(
                "Believe X-Forwarded-For/-Proto from ORCHESTRATOR_TRUSTED_PROXIES (the client "
                "is the right-most address that is not one of them)."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        proxy = options["proxy_headers"]
        config = uvicorn.Config(
            application,
            host=options["host"],
            port=options["port"],
            loop="uvloop",
            http=GuardedHttpToolsProtocol,  # httptools, with read limits
            ws="wsproto",
            ws_max_size=settings.WEBSOCKET_MAX_MESSAGE_SIZE,
            lifespan="on",
            proxy_headers=proxy,
            forwarded_allow_ips=settings.ORCHESTRATOR_TRUSTED_PROXIES,
            server_header=False,
            # On SIGTERM, open SSE streams get this long, then end (clients
            # reconnect with Last-Event-ID); uvicorn would otherwise wait for them.
            timeout_graceful_shutdown=STREAM_SHUTDOWN_SECONDS,
            # Django's LOGGING configures the loggers; one line per request
            # would cost more than the request under load (bench a).
            log_config=None,
            access_log=False,
        )
        uvicorn.Server(config).run()
