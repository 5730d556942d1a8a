"""``manage.py infer "prompt"``: submit a prompt and print its tokens as they stream."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference import services
from inference.models import Transport, backend_names
from inference.streaming import Finished, Reset, Token, follow
from pipeline.host import PipelineHost


class Command(BaseCommand):
    help = (
        "Submit a prompt, print its tokens as they stream, then its final status. "
        "In embedded mode the worker runs inside this command, so no server is needed."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("prompt")
        parser.add_argument("--backend", choices=backend_names(), default="")
        parser.add_argument("--session", default="", help="session_id to continue")
        parser.add_argument("--max-tokens", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        status = asyncio.run(self._run(options))
        if status != "completed":
            raise CommandError(f"request ended {status}")

    async def _run(self, options: dict[str, Any]) -> str:
        host = None
        if settings.ORCHESTRATOR_WORKER_MODE == "embedded":
            host = PipelineHost()
            host.start()
        try:
            return await self._submit_and_follow(options)
        finally:
            if host is not None:
                await host.stop()

    async def _submit_and_follow(self, options: dict[str, Any]) -> str:
        params = {"max_tokens": options["max_tokens"]} if options["max_tokens"] else {}
        submission = services.Submission(
            prompt=options["prompt"],
            session_id=options["session"],
            backend=options["backend"],
            params=params,
            transport=Transport.CLI,
        )
        request, _ = await database_sync_to_async(services.submit_request)(submission)
        self.stderr.write(f"request {request.pk} submitted")
        async for event in follow(request.pk):
            if isinstance(event, Token):
                self.stdout.write(event.text, ending="")
                self.stdout.flush()
            elif isinstance(event, Reset):
                self.stdout.write(f"\n[retrying: attempt {event.attempt}]\n")
            elif isinstance(event, Finished):
                final = event.request
                self.stdout.write("")
                detail = f" ({final.error_code}: {final.error})" if final.error else ""
                self.stderr.write(f"status: {final.status}{detail}")
                return str(final.status)
        return "unknown"
