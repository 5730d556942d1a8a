"""``manage.py run_pipeline``: a pipeline worker process (scaled mode)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from pipeline.host import PipelineHost
from pipeline.status_port import serve_status
from pipeline.worker import EngineConfig


class Command(BaseCommand):
    help = (
        "Run a pipeline worker: claim pending requests from the database and run "
        "them through the stages. SIGTERM stops claiming, lets in-flight requests "
        "finish within the grace period, then hands the rest back to the queue."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Requests run at once (default: ORCHESTRATOR_CONCURRENCY).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            help=(
                "Serve this worker's Prometheus /metrics and its liveness /healthz "
                "on this port (0: off)."
            ),
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=None,
            help="Seconds in-flight requests get to finish on SIGTERM.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config = EngineConfig.from_settings(options["concurrency"])
        if options["grace"] is not None:
            config = EngineConfig(**{**config.__dict__, "grace_seconds": options["grace"]})
        host = PipelineHost(config)
        if options["metrics_port"]:
            addr = settings.ORCHESTRATOR_METRICS_ADDR
            serve_status(options["metrics_port"], addr, host.engine.alive)
        asyncio.run(self._serve(host))

    async def _serve(self, host: PipelineHost) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        serving = host.start()
        self.stdout.write(
            f"pipeline worker {host.engine.identity} running "
            f"(concurrency {host.engine.config.concurrency})"
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        await host.stop()
        self.stdout.write("pipeline worker stopped")
