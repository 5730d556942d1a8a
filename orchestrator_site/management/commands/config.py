"""``manage.py config``: the effective configuration, every key with its value
and where it came from (default, file, env, secret, runtime), secrets redacted."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from orchestrator_site.config import json_schema, markdown_table


class Command(BaseCommand):
    help = "Show the effective configuration and each value's source (or its schema)."
    requires_system_checks: list[str] = []  # it must show a broken configuration too

    def add_arguments(self, parser: Any) -> None:
        shown = parser.add_mutually_exclusive_group()
        shown.add_argument("--json", action="store_true", help="As JSON.")
        shown.add_argument("--schema", action="store_true", help="The JSON Schema of the file.")
        shown.add_argument("--markdown", action="store_true", help="The README's key table.")

    def handle(self, *args: Any, **options: Any) -> None:
        loaded = settings.ORCHESTRATOR_CONFIGURATION
        if options["schema"]:
            return self.stdout.write(json.dumps(json_schema(), indent=2))
        if options["markdown"]:
            return self.stdout.write(markdown_table())
        if options["json"]:
            body = {"hash": loaded.hash, "file": loaded.path, "keys": loaded.report()}
            return self.stdout.write(json.dumps({**body, "errors": loaded.errors}, indent=2))
        self.stdout.write(f"configuration {loaded.hash}  file: {loaded.path or '(none)'}")
        for row in loaded.report():
            value = json.dumps(row["value"])
            value = value if len(value) <= 60 else value[:57] + "..."
            self.stdout.write(f"{row['key']:42} {value:62} {row['source']}")
        for error in loaded.errors:
            self.stderr.write(f"error: {error}")
