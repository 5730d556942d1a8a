"""``manage.py backends [--check]``: configured backends, their model and breaker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pipeline.backends import BackendError, GenerationParams, Usage, backend_names, get_backend
from pipeline.resilience import last_known_state

CHECK_MESSAGES = [{"role": "user", "content": "Say OK."}]


class Command(BaseCommand):
    help = "List the configured model backends; --check runs a tiny generation on each."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--check", action="store_true", help="generate a few tokens on each")
        parser.add_argument("--timeout", type=float, default=120.0)

    def handle(self, *args: Any, **options: Any) -> None:
        failed = []
        self.stdout.write(f"{'name':<12} {'model':<28} {'breaker':<10} {'fallback':<14} check")
        for name in backend_names():
            backend = get_backend(name)
            spec = settings.ORCHESTRATOR_BACKENDS[name]
            marker = "*" if name == settings.ORCHESTRATOR_DEFAULT_BACKEND else " "
            check = ""
            if options["check"]:
                check = asyncio.run(self._check(name, options["timeout"]))
                failed += [name] if check.startswith("FAILED") else []
            fallback = ",".join(spec.get("fallback", [])) or "-"
            self.stdout.write(
                f"{name + marker:<12} {backend.model or '-':<28} "
                f"{last_known_state(name):<10} {fallback:<14} {check}"
            )
        self.stdout.write("(* the default backend)")
        if failed:
            raise CommandError(f"check failed for: {', '.join(failed)}")

    async def _check(self, name: str, timeout: float) -> str:
        began = time.monotonic()
        usage = Usage()
        try:
            async with asyncio.timeout(timeout):
                stream = get_backend(name).stream(
                    CHECK_MESSAGES, GenerationParams(max_tokens=8), usage
                )
                text = "".join([t async for t in stream])
        except (BackendError, TimeoutError) as exc:
            return f"FAILED: {getattr(exc, 'message', None) or type(exc).__name__}"
        took = time.monotonic() - began
        return f"ok {took:.2f}s {usage.completion_tokens} tokens: {text.strip()[:30]!r}"
