"""``manage.py create_api_key NAME``: issue a key; its secret is printed once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from inference.models import ApiKey, BudgetPeriod


class Command(BaseCommand):
    help = (
        "Create an API key and print it (stdout carries only the key, so scripts can "
        "capture it). Only its hash is stored: it cannot be shown again."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")
        parser.add_argument("--owner", help="Username the key is issued to (an existing user).")
        parser.add_argument("--expires-in-days", type=float, help="Default: never expires.")
        parser.add_argument("--requests-per-minute", type=int, help="Default: the server's.")
        parser.add_argument("--max-in-flight", type=int, help="Default: the server's.")
        parser.add_argument(
            "--max-priority",
            type=int,
            choices=range(10),
            help="Requests asking for more run at this priority. Default: any.",
        )
        parser.add_argument(
            "--budget-tokens",
            type=int,
            help="Tokens per budget period (0: none). Default: the server's.",
        )
        parser.add_argument(
            "--budget-cost",
            type=Decimal,
            help="Cost per budget period (0: none). Default: the server's.",
        )
        parser.add_argument(
            "--budget-period",
            choices=BudgetPeriod.values,
            help="day or month (UTC), or window (--budget-window-hours). Default: the server's.",
        )
        parser.add_argument("--budget-window-hours", type=int, help="Default: the server's.")
        parser.add_argument(
            "--manage-documents",
            action="store_true",
            help="May add and delete documents of the shared RAG store.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("budget_tokens", "budget_cost", "budget_window_hours"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} cannot be negative.")
        fields: dict[str, Any] = {
            "name": options["name"][:50],
            "requests_per_minute": options["requests_per_minute"],
            "max_in_flight": options["max_in_flight"],
            "can_manage_documents": options["manage_documents"],
            "max_priority": options["max_priority"],
            "budget_tokens": options["budget_tokens"],
            "budget_cost": options["budget_cost"],
            "budget_period": options["budget_period"] or "",
            "budget_window_hours": options["budget_window_hours"],
        }
        if options["owner"]:
            try:
                fields["owner"] = get_user_model().objects.get(username=options["owner"])
            except get_user_model().DoesNotExist:
                raise CommandError(
                    f"No user {options['owner']!r}: --owner names an existing user. Create "
                    "it first (the admin's Users page, or manage.py shell -c \"from "
                    "django.contrib.auth.models import User; "
                    f'User.objects.create_user({options["owner"]!r})"), or leave --owner out.'
                ) from None
        if options["expires_in_days"] is not None:
            days = options["expires_in_days"]
            fields["expiry_date"] = timezone.now() + timedelta(days=days)
        key, secret = ApiKey.objects.create_key(**fields)
        self.stderr.write(f"Created key {key.prefix} ({key.name}). Store it now: it is not kept.")
        self.stdout.write(secret)
