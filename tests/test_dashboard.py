"""The staff dashboard: its numbers, its feed and its page."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from channels.routing import URLRouter
from channels.testing import ApplicationCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client
from django.urls import path
from django.utils import timezone

from inference.consumers import DashboardFeedConsumer
from inference.dashboard import snapshot
from inference.models import InferenceRequest
from tests.conftest import submit
from tests.sse import parse

pytestmark = pytest.mark.django_db


def finished(
    status: str,
    seconds: float,
    tokens: int = 10,
    first_token: float = 0.1,
    cache: str = "",
    ago: float = 0,
) -> None:
    """A request that took ``seconds`` and finished ``ago`` seconds ago."""
    now = timezone.now() - timedelta(seconds=ago)
    InferenceRequest.objects.create(
        prompt="p",
        session_id="s",
        backend="echo",
        status=status,
        created_at=now - timedelta(seconds=seconds),
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
        completion_tokens=tokens,
        prompt_tokens=5,
        timings={"first_token": first_token},
        cache_status=cache,
    )


def test_the_snapshot_summarises_the_last_minute() -> None:
    for seconds in (1, 2, 3, 4):
        finished("completed", seconds, tokens=15)
    finished("failed", 1)
    submit(priority=9)
    submit(priority=1)
    stats = snapshot()
    assert stats["throughput"] == 4 / 60
    assert stats["latency"]["p50"] == pytest.approx(3, abs=0.1)
    assert stats["latency"]["p99"] == pytest.approx(4, abs=0.1)
    assert stats["first_token_p50"] == 0.1
    assert stats["error_rate"] == 1 / 5
    assert stats["tokens_per_second"] == 60 / 60
    assert stats["queue"] == {"9": 1, "1": 1} and stats["in_flight"] == 0
    assert len(stats["latest"]) == 7
    assert stats["cache"] == {"hit_rate": None, "saved_tokens": 0}


def test_the_snapshot_shows_waits_per_tier_and_the_busiest_keys() -> None:
    for seconds in (1, 2):
        finished("completed", seconds)
    InferenceRequest.objects.filter(status="completed").update(
        timings={"queue_wait": 0.5}, priority=9, api_key_id=None
    )
    for _ in range(3):
        submit(priority=1)
    stats = snapshot()
    assert stats["tiers"]["high"] == {"waiting": 0, "wait_p95": 0.5}
    assert stats["tiers"]["low"] == {"waiting": 3, "wait_p95": None}
    assert stats["busiest_keys"] == [{"key": "anonymous", "finished": 2, "waiting": 3}]


def test_the_snapshot_counts_what_the_cache_saved() -> None:
    finished("completed", 2, tokens=20, cache="stored")
    finished("completed", 1, tokens=20, cache="hit", first_token=0.001)
    finished("completed", 1, tokens=20, cache="collapsed")
    finished("completed", 1, tokens=7, cache="ineligible")
    stats = snapshot()
    assert stats["cache"] == {"hit_rate": 2 / 3, "saved_tokens": 2 * 25}
    # Generated tokens and time to first token are the backend's, not the cache's.
    assert stats["tokens_per_second"] == 27 / 60
    assert stats["first_token_p50"] == 0.1


def test_the_snapshot_backfills_the_last_minute_in_buckets() -> None:
    now = timezone.now()
    finished("completed", 1, ago=52)  # the bucket starting 55 s ago
    finished("completed", 3, ago=52)
    finished("completed", 2, ago=12)  # 15 s ago
    finished("completed", 1, ago=1)  # 5 s ago
    finished("failed", 1, ago=1)
    stats = snapshot()
    history = stats["history"]
    times = [datetime.fromisoformat(point["time"]) for point in history]
    assert len(history) == 12
    assert all(b - a == timedelta(seconds=5) for a, b in itertools.pairwise(times))
    assert datetime.fromisoformat(stats["time"]) - times[0] == timedelta(seconds=60)
    by_age = {
        round((now - t).total_seconds()): point for t, point in zip(times, history, strict=True)
    }
    assert by_age[55]["throughput"] == 2 / 5 and by_age[55]["tokens_per_second"] == 20 / 5
    assert by_age[55]["latency"]["p50"] == pytest.approx(3, abs=0.1)
    assert by_age[15]["throughput"] == 1 / 5
    assert by_age[5]["throughput"] == 1 / 5 and by_age[5]["error_rate"] == 1 / 2
    assert by_age[30] == {
        "time": by_age[30]["time"],
        "throughput": 0,
        "latency": {"p50": None, "p95": None, "p99": None},
        "first_token_p50": None,
        "error_rate": 0,
        "tokens_per_second": 0,
    }
    assert sum(point["throughput"] for point in history) * 5 == pytest.approx(4)


def test_the_latest_requests_link_to_their_admin_page() -> None:
    request = submit()
    [row] = snapshot()["latest"]
    assert row["url"] == f"/admin/inference/inferencerequest/{request.pk}/change/"


def test_the_page_is_for_staff_only(client: Client, admin_client: Client) -> None:
    assert client.get("/dashboard/").status_code == 302  # to the login page
    page = admin_client.get("/dashboard/").content.decode()
    assert "uPlot.iife.min.js" in page and "/static/inference/vendor/" in page
    assert "cdn" not in page.lower()


async def feed(user) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/dashboard/feed",
        "query_string": b"",
        "headers": [],
        "user": user,
    }
    app = URLRouter([path("dashboard/feed", DashboardFeedConsumer.as_asgi())])
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(5)
    body = (await communicator.receive_output(5)).get("body", b"").decode()
    await communicator.send_input({"type": "http.disconnect"})
    return start["status"], body


@pytest.mark.django_db(transaction=True)
async def test_the_feed_streams_stats_to_staff_and_refuses_others() -> None:
    status, body = await feed(AnonymousUser())
    assert status == 403 and "forbidden" in body
    staff = User(username="s", is_staff=True, is_active=True)
    status, body = await feed(staff)
    assert status == 200
    [event] = parse(body)
    assert event.event == "stats" and {"throughput", "latency", "queue", "latest"} <= set(
        event.data
    )


def test_the_snapshot_ranks_keys_by_the_tokens_they_consumed_in_a_day() -> None:
    from decimal import Decimal

    from tests.keys import make_key

    heavy, _ = make_key("heavy")
    light, _ = make_key("light")
    for key, tokens, cache in [
        (heavy, 100, ""),
        (heavy, 50, ""),
        (light, 30, ""),
        (light, 500, "hit"),
    ]:
        finished("completed", 1, tokens=tokens, cache=cache)
        InferenceRequest.objects.filter(api_key=None).update(api_key=key, cost=Decimal("0.5"))
    old = timezone.now() - timedelta(hours=25)
    finished("completed", 1, tokens=10_000)
    InferenceRequest.objects.filter(api_key=None).update(api_key=light, finished_at=old)
    top = snapshot()["top_keys_by_tokens"]
    assert top == [  # 5 prompt tokens each; the hit and the row of yesterday count nothing
        {"key": heavy.prefix, "requests": 2, "tokens": 160, "cost": 1.0},
        {"key": light.prefix, "requests": 2, "tokens": 35, "cost": 1.0},
    ]
