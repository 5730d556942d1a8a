"""``manage.py infer "prompt"``: submit a prompt and print its tokens as they stream."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import ValidationError

from inference import services
from inference.admission import Refusal
from inference.errors import validation_error_body
from inference.models import Status, Transport
from inference.serializers import InferRequestSerializer
from inference.streaming import Finished, Reset, Token, follow
from pipeline.host import PipelineHost

EXIT_INVALID = 2  # as argparse exits for a bad option
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells report for a command stopped by Ctrl-C


def neutral(text: str) -> str:
    """Django styles everything on stderr as an error; a status line is not one."""
    return text


class Command(BaseCommand):
    help = (
        "Submit a prompt, print its tokens as they stream (stdout), then its final status "
        "(stderr). In embedded mode the worker runs inside this command, so no server is "
        "needed. Ctrl-C cancels the request."
    )
    stealth_options = ("stdin",)  # call_command(..., stdin=...) in tests

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("prompt", help='the prompt; "-" reads it from stdin')
        parser.add_argument("--backend", help="a configured backend (default: the default one)")
        parser.add_argument("--session", help="session_id to continue")
        parser.add_argument("--max-tokens", type=int)
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--no-rag", action="store_true", help="skip retrieval (the RAG stage)")
        parser.add_argument("--system", help="a system prompt instead of the configured one")

    def handle(self, *args: Any, **options: Any) -> None:
        submission = self._submission(options)
        try:
            status = asyncio.run(self._run(submission))
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        if status != "completed":
            raise CommandError(f"request ended {status}")

    def _submission(self, options: dict[str, Any]) -> services.Submission:
        """The options as a REST submit body, held to the REST API's rules."""
        body = {
            "prompt": self._prompt(options),
            "backend": options["backend"],
            "session_id": options["session"],
            "max_tokens": options["max_tokens"],
            "temperature": options["temperature"],
            "rag": False if options["no_rag"] else None,
            "system": options["system"],
        }
        serializer = InferRequestSerializer(
            data={field: value for field, value in body.items() if value is not None}
        )
        try:
            serializer.is_valid(raise_exception=True)
        except ValidationError as error:
            message = validation_error_body(error)["error"]["message"]
            raise CommandError(message, returncode=EXIT_INVALID) from None
        return serializer.to_submission(transport=Transport.CLI)

    def _prompt(self, options: dict[str, Any]) -> str:
        if options["prompt"] != "-":
            return str(options["prompt"])
        # `echo … |` and heredocs end the text with a newline the user did not type.
        stdin = options.get("stdin") or sys.stdin
        return str(stdin.read()).rstrip("\n")

    async def _run(self, submission: services.Submission) -> str:
        host = None
        if settings.ORCHESTRATOR_WORKER_MODE == "embedded":
            host = PipelineHost()
            host.start()
        try:
            # Shielded: a Ctrl-C during the submit must not leave its row behind running.
            submitting = asyncio.ensure_future(
                database_sync_to_async(services.submit_request)(submission)
            )
            try:
                request, _ = await asyncio.shield(submitting)
            except asyncio.CancelledError:
                request, _ = await submitting
                await self._cancel(request.pk)
                raise
            except Refusal as refusal:  # e.g. a full queue: what the API would answer
                raise CommandError(f"refused ({refusal.code}): {refusal.message}") from None
            self._status(f"request {request.pk} submitted")
            return await self._follow_until_interrupted(request.pk)
        finally:
            if host is not None:
                await host.stop()

    async def _follow_until_interrupted(self, request_id: uuid.UUID) -> str:
        try:
            return await self._print_stream(request_id)
        except asyncio.CancelledError:
            # Ctrl-C: asyncio.run cancels this task, then raises KeyboardInterrupt.
            # Left alone the request would run on (the worker stopping hands it back
            # to the queue, and another one finishes it, unseen): cancel it.
            await self._cancel(request_id)
            raise

    async def _cancel(self, request_id: uuid.UUID) -> None:
        """Cancel it, and say so, unless it had already finished."""
        request = await database_sync_to_async(services.cancel_request)(request_id)
        if request.status == Status.CANCELLED:
            self._status(f"cancelled {request_id}")
        else:
            self._status(f"status: {request.status} (it finished before the cancel)")

    async def _print_stream(self, request_id: uuid.UUID) -> str:
        async for event in follow(request_id):
            if isinstance(event, Token):
                self.stdout.write(event.text, ending="")
                self.stdout.flush()
            elif isinstance(event, Reset):
                self.stdout.write("")
                self._status(f"retrying: attempt {event.attempt}")
            elif isinstance(event, Finished):
                final = event.request
                self.stdout.write("")
                detail = f" ({final.error_code}: {final.error})" if final.error else ""
                self._status(f"status: {final.status}{detail}")
                return str(final.status)
        return "unknown"

    def _status(self, line: str) -> None:
        self.stderr.write(line, style_func=neutral)
