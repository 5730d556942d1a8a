"""``GET /api/v1/usage``: tokens and cost over time, grouped, and each key sees only
its own."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from inference.models import ApiKey, InferenceRequest

pytestmark = pytest.mark.django_db


def finished(key: ApiKey | None, days_ago: int, tokens: int, cost: str, model: str = "m") -> None:
    when = timezone.now() - timedelta(days=days_ago)
    InferenceRequest.objects.create(
        api_key=key,
        prompt="p",
        session_id="s",
        backend="echo",
        backend_used="echo",
        model_used=model,
        status="completed",
        created_at=when,
        finished_at=when,
        prompt_tokens=tokens,
        completion_tokens=2 * tokens,
        cost=Decimal(cost),
    )


@pytest.fixture
def keys(settings) -> tuple[tuple[ApiKey, str], tuple[ApiKey, str]]:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = True
    return ApiKey.objects.create_key(name="alice"), ApiKey.objects.create_key(name="bob")


def get(client: Client, secret: str, **query: str) -> dict:
    response = client.get("/api/v1/usage", query, headers={"X-API-Key": secret})
    assert response.status_code == 200, response.content
    return response.json()


def test_usage_by_day_for_the_caller_only(client: Client, keys) -> None:  # type: ignore[no-untyped-def]
    (alice, alice_secret), (bob, bob_secret) = keys
    finished(alice, 0, 10, "0.5")
    finished(alice, 0, 5, "0.25")
    finished(alice, 2, 1, "0.01")
    finished(bob, 0, 1000, "99")
    finished(alice, 40, 7, "1")  # outside the default 30 days
    report = get(client, alice_secret)
    assert report["group_by"] == ["day"]
    assert [
        (r["requests"], r["prompt_tokens"], r["completion_tokens"], Decimal(r["cost"]))
        for r in report["rows"]
    ] == [
        (1, 1, 2, Decimal("0.01")),
        (2, 15, 30, Decimal("0.75")),
    ]
    assert get(client, bob_secret)["rows"][0]["prompt_tokens"] == 1000


def test_grouped_by_key_and_model_and_staff_see_everyone(
    client: Client, admin_client: Client, keys
) -> None:  # type: ignore[no-untyped-def]
    (alice, alice_secret), (bob, _) = keys
    finished(alice, 0, 10, "1", model="a")
    finished(alice, 0, 10, "1", model="b")
    finished(bob, 0, 10, "1", model="a")
    mine = get(client, alice_secret, group_by="model")["rows"]
    assert [(r["backend"], r["model"], r["requests"]) for r in mine] == [
        ("echo", "a", 1),
        ("echo", "b", 1),
    ]
    everyone = admin_client.get("/api/v1/usage", {"group_by": "key,model"}).json()["rows"]
    assert sorted((r["key"], r["model"]) for r in everyone) == sorted(
        [(alice.prefix, "a"), (alice.prefix, "b"), (bob.prefix, "a")]
    )
    one = admin_client.get("/api/v1/usage", {"group_by": "key", "key": bob.prefix}).json()
    assert [r["key"] for r in one["rows"]] == [bob.prefix]


def test_a_key_cannot_ask_for_another_s_usage_and_bad_queries_are_400s(
    client: Client, keys
) -> None:  # type: ignore[no-untyped-def]
    (_, alice_secret), (bob, _) = keys
    headers = {"X-API-Key": alice_secret}
    assert client.get("/api/v1/usage", {"key": bob.prefix}, headers=headers).status_code == 403
    for query in ({"group_by": "colour"}, {"since": "yesterday"}):
        response = client.get("/api/v1/usage", query, headers=headers)
        assert response.status_code == 400 and response.json()["error"]["param"]
