"""``manage.py seed_requests --count N``: fill the database with finished requests,
to check that the admin and the API stay fast at scale (PostgreSQL: one
``generate_series`` INSERT; elsewhere batched bulk inserts)."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.db import connection
from django.utils import timezone

from inference.models import InferenceRequest

STATUSES = ["completed"] * 8 + ["failed", "cancelled"]

POSTGRES_SEED = """
INSERT INTO inference_inferencerequest (
    id, session_id, prompt, metadata, priority, transport, backend, backend_used, params,
    status, result, error, error_code, attempt, max_attempts, lease_owner, last_seq,
    created_at, fair_at, started_at, finished_at, timings, prompt_tokens, completion_tokens,
    passages, messages)
SELECT
    gen_random_uuid(), 'seed-' || (n %% 5000), 'seeded prompt ' || n, '{}'::jsonb, n %% 10,
    'rest', (ARRAY['local', 'echo'])[1 + n %% 2], (ARRAY['local', 'echo'])[1 + n %% 2], '{}'::jsonb,
    (ARRAY['completed','completed','completed','completed','failed','cancelled'])[1 + n %% 6],
    'seeded result ' || n, NULL, '', 1, 3, '', 3,
    now() - (n || ' seconds')::interval, now() - (n || ' seconds')::interval,
    now() - (n || ' seconds')::interval,
    now() - (n || ' seconds')::interval + interval '2 seconds',
    '{"inference": 1.5}'::jsonb, 20, 40, '[]'::jsonb, '[]'::jsonb
FROM generate_series(1, %s) AS n
"""


class Command(BaseCommand):
    help = "Insert N finished requests (for scale checks)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, default=1_000_000)

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["count"]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(POSTGRES_SEED, [count])
                cursor.execute("ANALYZE inference_inferencerequest")
        else:
            self._bulk(count)
        self.stdout.write(f"inserted {count} requests")

    def _bulk(self, count: int) -> None:
        now = timezone.now()
        for start in range(0, count, 5000):
            InferenceRequest.objects.bulk_create(
                InferenceRequest(
                    id=uuid.uuid4(),
                    session_id=f"seed-{n % 5000}",
                    prompt=f"seeded prompt {n}",
                    backend="echo",
                    status=random.choice(STATUSES),
                    result=f"seeded result {n}",
                    attempt=1,
                    created_at=now - timedelta(seconds=n),
                    started_at=now - timedelta(seconds=n),
                    finished_at=now - timedelta(seconds=n) + timedelta(seconds=2),
                )
                for n in range(start, min(start + 5000, count))
            )
