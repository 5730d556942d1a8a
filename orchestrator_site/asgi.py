"""ASGI entry point: HTTP (Django + streaming consumers), WebSocket, channels.

In embedded mode the pipeline engine lives in this process too (see
``pipeline.host.EmbeddedPipeline``).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
django_asgi_app = get_asgi_application()

# Imports that touch models come after Django is set up.
from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from pipeline.consumers import PipelineConsumer  # noqa: E402
from pipeline.host import EmbeddedPipeline  # noqa: E402

application = EmbeddedPipeline(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "channel": ChannelNameRouter({settings.PIPELINE_CHANNEL: PipelineConsumer.as_asgi()}),
        }
    ),
    enabled=settings.ORCHESTRATOR_WORKER_MODE == "embedded",
)
