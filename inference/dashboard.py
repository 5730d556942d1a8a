"""Numbers for the live dashboard: the last minute of requests, read from the DB."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from inference.models import CacheStatus, InferenceRequest, Status

WINDOW_SECONDS = 60
SERVED = (CacheStatus.HIT, CacheStatus.COLLAPSED)


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted ``values`` (nearest rank), None when empty."""
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def snapshot() -> dict[str, Any]:
    now = timezone.now()
    finished = list(
        InferenceRequest.objects.filter(
            finished_at__gte=now - timedelta(seconds=WINDOW_SECONDS)
        ).values_list(
            "status",
            "created_at",
            "finished_at",
            "timings",
            "completion_tokens",
            "cache_status",
            "prompt_tokens",
        )
    )
    completed = [row for row in finished if row[0] == Status.COMPLETED]
    # Answers no backend was asked for: from the cache, or a shared call.
    served = [row for row in completed if row[5] in SERVED]
    generated = [row for row in completed if row[5] not in SERVED]
    keyed = [row for row in finished if row[5] in (*SERVED, CacheStatus.MISS, CacheStatus.STORED)]
    durations = sorted((row[2] - row[1]).total_seconds() for row in completed if row[2])
    first_tokens = sorted(row[3]["first_token"] for row in generated if "first_token" in row[3])
    waiting = (
        InferenceRequest.objects.filter(status=Status.PENDING)
        .values("priority")
        .annotate(n=Count("id"))
    )
    latest = InferenceRequest.objects.order_by("-created_at").values(
        "id", "status", "backend", "created_at"
    )[:10]
    return {
        "time": now.isoformat(),
        "throughput": len(completed) / WINDOW_SECONDS,
        "latency": {f"p{q}": quantile(durations, q / 100) for q in (50, 95, 99)},
        "first_token_p50": quantile(first_tokens, 0.5),
        "queue": {str(row["priority"]): row["n"] for row in waiting},
        "in_flight": InferenceRequest.objects.filter(status=Status.PROCESSING).count(),
        "error_rate": sum(row[0] == Status.FAILED for row in finished) / max(len(finished), 1),
        "tokens_per_second": sum(row[4] for row in generated) / WINDOW_SECONDS,
        "cache": {
            "hit_rate": len(served) / len(keyed) if keyed else None,
            "saved_tokens": sum(row[4] + row[6] for row in served),
        },
        "latest": [
            {**row, "id": str(row["id"]), "created_at": row["created_at"].isoformat()}
            for row in latest
        ],
    }
