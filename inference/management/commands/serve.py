"""``manage.py serve``: the production web server (daphne, no autoreload, no static
handler beyond the app's own), with graceful WebSocket shutdown."""

from __future__ import annotations

from typing import Any

from daphne.endpoints import build_endpoint_description_strings
from django.conf import settings
from django.core.management.base import BaseCommand

from orchestrator_site.asgi import application
from orchestrator_site.server import OrchestratorServer


class Command(BaseCommand):
    help = "Serve the ASGI application with daphne (HTTP, SSE, WebSocket)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--proxy-headers",
            action="store_true",
            help="Trust X-Forwarded-For/-Port/-Proto from a reverse proxy.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        proxy = options["proxy_headers"]
        OrchestratorServer(
            application=application,
            endpoints=build_endpoint_description_strings(
                host=options["host"], port=options["port"]
            ),
            proxy_forwarded_address_header="X-Forwarded-For" if proxy else None,
            proxy_forwarded_port_header="X-Forwarded-Port" if proxy else None,
            proxy_forwarded_proto_header="X-Forwarded-Proto" if proxy else None,
            websocket_max_message_size=settings.DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE,
        ).run()
