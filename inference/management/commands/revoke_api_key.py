"""``manage.py revoke_api_key PREFIX``: revoke a key for good (its requests stay)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the part before the dot). Cannot be undone."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = options["prefix"].partition(".")[0]
        if not ApiKey.objects.filter(prefix=prefix).exists():
            raise CommandError(f"No key with prefix {prefix!r}.")
        ApiKey.objects.filter(prefix=prefix).update(revoked=True)
        self.stdout.write(f"Revoked {prefix}.")
