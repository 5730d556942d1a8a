"""Numbers for the live dashboard: the last minute of requests, read from the DB."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.urls import reverse
from django.utils import timezone

from inference.models import TIERS, CacheStatus, InferenceRequest, Status, tier_of

WINDOW_SECONDS = 60
# The window's history, for a page just opened to draw the minute it missed.
HISTORY_BUCKET_SECONDS = 5
SERVED = (CacheStatus.HIT, CacheStatus.COLLAPSED)
KEYED = (*SERVED, CacheStatus.MISS, CacheStatus.STORED)
BUSIEST = 5
# Top keys by tokens look back further than the live window: a day, recounted at
# most this often per process (an aggregate over a day of rows, not per tick).
TOP_KEYS_WINDOW = timedelta(hours=24)
TOP_KEYS_EVERY = timedelta(seconds=30)
Rows = Sequence[Mapping[str, Any]]


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
        ).values(
            "status",
            "created_at",
            "finished_at",
            "timings",
            "prompt_tokens",
            "completion_tokens",
            "cache_status",
            "priority",
            "api_key_id",
        )
    )
    # Answers no backend was asked for: from the cache, or a shared call.
    served = [row for row in finished if row["status"] == Status.COMPLETED and served_row(row)]
    keyed = [row for row in finished if row["cache_status"] in KEYED]
    pending = InferenceRequest.objects.filter(status=Status.PENDING)
    waiting = pending.values("priority").annotate(n=Count("id"))
    latest = InferenceRequest.objects.order_by("-created_at").values(
        "id", "status", "backend", "created_at"
    )[:10]
    return {
        "time": now.isoformat(),
        **rates(finished, WINDOW_SECONDS),
        "queue": {str(row["priority"]): row["n"] for row in waiting},
        "in_flight": InferenceRequest.objects.filter(status=Status.PROCESSING).count(),
        "cache": {
            "hit_rate": len(served) / len(keyed) if keyed else None,
            "saved_tokens": sum(row["prompt_tokens"] + row["completion_tokens"] for row in served),
        },
        "tiers": tier_waits(finished, waiting),
        "busiest_keys": busiest_keys(finished, pending),
        "top_keys_by_tokens": top_keys.get(now),
        "latest": [
            {
                **row,
                "id": str(row["id"]),
                "created_at": row["created_at"].isoformat(),
                "url": reverse("admin:inference_inferencerequest_change", args=[row["id"]]),
            }
            for row in latest
        ],
        "history": history(finished, now),
    }


def served_row(row: Mapping[str, Any]) -> bool:
    return row["cache_status"] in SERVED


def rates(finished: Rows, seconds: float) -> dict[str, Any]:
    """Throughput, latency, first token, errors and tokens/s of the rows that
    finished in a span of ``seconds``."""
    completed = [row for row in finished if row["status"] == Status.COMPLETED]
    # Generated tokens and time to first token are the backend's, not the cache's.
    generated = [row for row in completed if not served_row(row)]
    durations = sorted(
        (row["finished_at"] - row["created_at"]).total_seconds() for row in completed
    )
    first_tokens = sorted(
        row["timings"]["first_token"] for row in generated if "first_token" in row["timings"]
    )
    return {
        "throughput": len(completed) / seconds,
        "latency": {f"p{q}": quantile(durations, q / 100) for q in (50, 95, 99)},
        "first_token_p50": quantile(first_tokens, 0.5),
        "error_rate": sum(row["status"] == Status.FAILED for row in finished)
        / max(len(finished), 1),
        "tokens_per_second": sum(row["completion_tokens"] for row in generated) / seconds,
    }


def history(finished: Rows, now: Any) -> list[dict[str, Any]]:
    """The window as buckets of HISTORY_BUCKET_SECONDS, oldest first, each timed
    at its start with its own rates, so a page just opened draws the last minute
    instead of starting empty. Every snapshot carries it (the feed has no first
    message of its own); it costs no query, being the rows read anyway. The live
    points are rolling minutes: the same units, smoother. Queue depth has no
    history: finished rows cannot say what was waiting then."""
    count = WINDOW_SECONDS // HISTORY_BUCKET_SECONDS
    start = now - timedelta(seconds=WINDOW_SECONDS)
    buckets: list[list[Mapping[str, Any]]] = [[] for _ in range(count)]
    for row in finished:
        index = int((row["finished_at"] - start).total_seconds() // HISTORY_BUCKET_SECONDS)
        buckets[min(max(index, 0), count - 1)].append(row)
    return [
        {
            "time": (start + timedelta(seconds=i * HISTORY_BUCKET_SECONDS)).isoformat(),
            **rates(rows, HISTORY_BUCKET_SECONDS),
        }
        for i, rows in enumerate(buckets)
    ]


def tier_waits(finished: Rows, waiting: Any) -> dict[str, dict[str, Any]]:
    """Per tier: how many wait now, and the p95 queue wait of those that ran."""
    tiers: dict[str, dict[str, Any]] = {tier: {"waiting": 0, "wait_p95": None} for tier in TIERS}
    for row in waiting:
        tiers[tier_of(row["priority"])]["waiting"] += row["n"]
    for tier in TIERS:
        waits = sorted(
            row["timings"]["queue_wait"]
            for row in finished
            if tier_of(row["priority"]) == tier and "queue_wait" in row["timings"]
        )
        tiers[tier]["wait_p95"] = quantile(waits, 0.95)
    return tiers


def busiest_keys(finished: Rows, pending: Any) -> list[dict[str, Any]]:
    """The keys with the most requests finished in the window or waiting now."""
    done = Counter(row["api_key_id"] for row in finished)
    queued = Counter(dict(pending.values_list("api_key_id").annotate(n=Count("id"))))
    top = (done + queued).most_common(BUSIEST)
    return [
        {"key": prefix or "anonymous", "finished": done[prefix], "waiting": queued[prefix]}
        for prefix, _ in top
    ]


class TopKeys:
    """The keys whose requests consumed the most tokens in the last day (a cache
    hit or dedup follower consumed none), with their cost."""

    def __init__(self) -> None:
        self.counted: tuple[Any, list[dict[str, Any]]] | None = None

    def get(self, now: Any) -> list[dict[str, Any]]:
        if self.counted is None or now - self.counted[0] >= TOP_KEYS_EVERY:
            self.counted = (now, self.count(now))
        return self.counted[1]

    @staticmethod
    def count(now: Any) -> list[dict[str, Any]]:
        billed = ~Q(cache_status__in=SERVED)
        rows = (
            InferenceRequest.objects.filter(finished_at__gte=now - TOP_KEYS_WINDOW)
            .values("api_key_id")
            .annotate(
                requests=Count("pk"),
                tokens=Sum(F("prompt_tokens") + F("completion_tokens"), filter=billed),
                cost=Sum("cost"),
            )
            .order_by(F("tokens").desc(nulls_last=True))[:BUSIEST]
        )
        return [
            {
                "key": row["api_key_id"] or "anonymous",
                "requests": row["requests"],
                "tokens": row["tokens"] or 0,
                "cost": float(row["cost"] or 0),
            }
            for row in rows
        ]


top_keys = TopKeys()
