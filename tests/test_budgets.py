"""Budgets: a key's tokens and cost per period, reserved at admission, settled by
each request's own completion, refused with a 429 that says when it resets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from channels.db import database_sync_to_async
from django.db import transaction
from django.test import Client

from inference import budgets, services
from inference.auth import Caller
from inference.models import ApiKey, BudgetLedger, InferenceRequest, Status
from pipeline.worker import Engine
from tests.conftest import finished
from tests.keys import bearer, make_key

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "one two three"  # 13 characters: 3 tokens as admission estimates them
ASK = 3 + 10  # ...plus max_tokens


def post(secret: str, prompt: str = PROMPT, **body: Any) -> Any:
    payload = {"prompt": prompt, "max_tokens": 10, **body}
    return Client().post(
        "/api/v1/infer", payload, content_type="application/json", headers=bearer(secret)
    )


def used(key: ApiKey, now: datetime | None = None) -> tuple[int, Decimal]:
    budget = budgets.budget_of(Caller(key=key))
    assert budget is not None
    now = now or datetime.now(UTC)
    start, end = budget.bounds(now)
    with transaction.atomic():
        return budgets.used(key.prefix, start, end, now)


def test_a_token_budget_admits_what_fits_and_refuses_the_rest_with_the_reset() -> None:
    key, secret = make_key(budget_tokens=3 * ASK + 5, budget_period="day")
    remaining = [int(post(secret)["x-budget-remaining-tokens"]) for _ in range(3)]
    assert remaining == [2 * ASK + 5, ASK + 5, 5]

    refused = post(secret)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "rate_limit_error")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
    assert error["reset_at"] == refused["x-budget-reset"] == tomorrow
    assert refused["x-should-retry"] == "false"
    assert 0 < int(refused["Retry-After"]) <= 86_400
    assert f"{3 * ASK} of {3 * ASK + 5} tokens used" in error["message"]
    assert InferenceRequest.objects.filter(api_key=key).count() == 3
    # A smaller request still fits in what is left.
    assert post(secret, "hi", max_tokens=4).status_code == 202


async def test_completion_settles_the_reservation_with_what_was_consumed(
    engine: Engine,
) -> None:
    key, secret = await database_sync_to_async(make_key)(budget_tokens=1000)
    response = await database_sync_to_async(post)(secret)
    done = await finished(response.json()["request_id"])
    assert done.status == Status.COMPLETED and 0 < done.billed_tokens < ASK
    assert (await database_sync_to_async(used)(key))[0] == done.billed_tokens
    after = await database_sync_to_async(post)(secret)
    assert int(after["x-budget-remaining-tokens"]) == 1000 - done.billed_tokens - ASK


async def test_finished_requests_fold_into_the_ledger_once(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    key, secret = await database_sync_to_async(make_key)(budget_tokens=1000)
    ids = [(await database_sync_to_async(post)(secret)).json()["request_id"] for _ in range(3)]
    billed = sum([(await finished(pk)).billed_tokens for pk in ids])
    settings.ORCHESTRATOR_LEASE_SECONDS = 0.001  # fold what has finished at once
    await asyncio.sleep(0.01)
    for _ in range(2):  # folding twice must not count twice
        assert (await database_sync_to_async(used)(key))[0] == billed
    ledger = await BudgetLedger.objects.aget(api_key=key)
    assert ledger.tokens == billed
    settled = InferenceRequest.objects.filter(api_key=key, budget_settled=True)
    assert await settled.acount() == 3


async def test_a_cancelled_request_counts_what_it_consumed(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    from tests.test_usage import tokens_seen

    key, secret = await database_sync_to_async(make_key)(budget_tokens=10_000)
    response = await database_sync_to_async(post)(secret, backend="endless", max_tokens=500)
    request_id = response.json()["request_id"]
    await tokens_seen(request_id, 5)
    await database_sync_to_async(services.cancel_request)(request_id)
    for _ in range(100):  # the worker records what it had consumed once it stops
        row = await InferenceRequest.objects.aget(pk=request_id)
        if row.completion_tokens:
            break
        await asyncio.sleep(0.02)
    assert row.status == Status.CANCELLED and 5 < row.billed_tokens < 503
    # Until folded it holds its reservation (its worker may not have recorded yet)...
    assert (await database_sync_to_async(used)(key))[0] == 3 + 500
    settings.ORCHESTRATOR_LEASE_SECONDS = 0.001
    await asyncio.sleep(0.01)
    # ...then what it consumed.
    assert (await database_sync_to_async(used)(key))[0] == row.billed_tokens


def test_a_cancelled_request_keeps_its_reservation_until_its_consumption_is_known(
    settings,  # type: ignore[no-untyped-def]
) -> None:
    key, secret = make_key(budget_tokens=ASK)
    first = post(secret).json()["request_id"]
    InferenceRequest.objects.filter(pk=first).update(status=Status.PROCESSING, attempt=1)
    services.cancel_request(first)
    assert post(secret).status_code == 429  # its worker has not said what it consumed
    settings.ORCHESTRATOR_LEASE_SECONDS = 0.001
    assert post(secret, "hi", max_tokens=1).status_code == 202  # folded: consumed 0 so far
    # ...the worker records late: the ledger gets the difference, not nothing.
    consumed = {"prompt_tokens": 3, "completion_tokens": 9, "cost": Decimal(0)}
    assert InferenceRequest.objects.record_consumption(first, 1, **consumed)
    assert BudgetLedger.objects.get(api_key=key).tokens == 12
    assert used(key)[0] == 12 + 1


async def test_a_cache_hit_costs_the_budget_nothing(engine: Engine) -> None:
    key, secret = await database_sync_to_async(make_key)(budget_tokens=1000)
    first = (await database_sync_to_async(post)(secret, temperature=0)).json()["request_id"]
    first_row = await finished(first)
    hit = (await database_sync_to_async(post)(secret, temperature=0)).json()["request_id"]
    hit_row = await finished(hit)
    assert hit_row.cache_status == "hit" and hit_row.billed_tokens == 0
    assert (await database_sync_to_async(used)(key))[0] == first_row.billed_tokens


def test_a_cost_budget_reserves_at_the_price_table(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_PRICES = {"echo": {"input_per_million": 1e6, "output_per_million": 2e6}}
    _, secret = make_key(budget_cost=Decimal("60"))
    first = post(secret)  # 3 x $1 in + 10 x $2 out
    assert Decimal(first["x-budget-remaining-cost"]) == 60 - 23
    assert "x-budget-remaining-tokens" not in first
    assert post(secret).status_code == 202
    refused = post(secret)
    assert refused.status_code == 429
    assert "46 of 60 used, this request may cost 23." in refused.json()["error"]["message"]


def test_the_server_default_applies_unless_the_key_overrides_it(
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.ORCHESTRATOR_BUDGET_TOKENS = ASK
    _, default = make_key("default")
    _, unlimited = make_key("unlimited", budget_tokens=0)
    assert post(default).status_code == 202
    assert post(default).status_code == 429
    assert [post(unlimited).status_code for _ in range(3)] == [202] * 3
    assert "x-budget-remaining-tokens" not in post(unlimited)


def test_a_new_budget_counts_what_the_period_already_consumed() -> None:
    key, secret = make_key(budget_tokens=0)
    earlier = post(secret).json()["request_id"]
    InferenceRequest.objects.filter(pk=earlier).update(
        status=Status.COMPLETED, prompt_tokens=40, completion_tokens=50
    )
    ApiKey.objects.filter(pk=key.pk).update(budget_tokens=100 + ASK)
    assert int(post(secret)["x-budget-remaining-tokens"]) == 100 + ASK - 90 - ASK


@pytest.mark.parametrize(
    ("period", "last_moment", "next_period"),
    [
        ("day", datetime(2026, 12, 30, 23, 59, 59), datetime(2026, 12, 31, 0, 0, 1)),
        ("month", datetime(2026, 12, 31, 23, 59, 59), datetime(2027, 1, 1, 0, 0, 1)),
    ],
)
def test_a_budget_starts_over_at_the_period_boundary(
    period: str, last_moment: datetime, next_period: datetime
) -> None:
    with time_machine.travel(last_moment.replace(tzinfo=UTC), tick=False) as clock:
        _, secret = make_key(budget_tokens=ASK, budget_period=period)
        assert post(secret).status_code == 202
        refused = post(secret)
        assert refused.status_code == 429
        reset = next_period.replace(second=0)
        assert refused["x-budget-reset"] == reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert refused["Retry-After"] == "1"
        clock.move_to(next_period.replace(tzinfo=UTC))
        assert post(secret).status_code == 202
        assert post(secret).status_code == 429


def test_a_window_budget_counts_from_the_keys_creation() -> None:
    created = datetime(2026, 11, 3, 10, 30, tzinfo=UTC)
    with time_machine.travel(created, tick=False) as clock:
        _, secret = make_key(budget_tokens=ASK, budget_period="window", budget_window_hours=6)
        clock.move_to(created + timedelta(hours=5, minutes=59))
        assert post(secret).status_code == 202
        refused = post(secret)
        assert refused["x-budget-reset"] == "2026-11-03T16:30:00Z"
        clock.move_to(created + timedelta(hours=6))
        assert post(secret).status_code == 202


def test_staff_have_no_budget(settings) -> None:  # type: ignore[no-untyped-def]
    from tests.keys import operator

    settings.ORCHESTRATOR_BUDGET_TOKENS = 1
    client = Client()
    client.force_login(operator())
    body = {"prompt": PROMPT}
    assert client.post("/api/v1/infer", body, content_type="application/json").status_code == 202


def test_a_request_larger_than_the_whole_budget_is_a_400_not_a_wait() -> None:
    _, secret = make_key(budget_tokens=200, budget_period="day")
    response = post(secret, max_tokens=256)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("request_exceeds_budget", "max_tokens")
    assert "259 tokens, more than the key's whole budget of 200 tokens per day" in error["message"]


def test_what_is_left_of_a_cost_budget_reads_as_a_number(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_PRICES = {"echo": {"input_per_million": 1e6, "output_per_million": 2e6}}
    _, secret = make_key(budget_cost=Decimal("23.5"))
    assert post(secret)["x-budget-remaining-cost"] == "0.5"


def test_a_longer_period_counts_what_its_shorter_one_consumed() -> None:
    key, secret = make_key(budget_tokens=ASK, budget_period="day")
    assert post(secret).status_code == 202
    assert post(secret).status_code == 429
    ApiKey.objects.filter(pk=key.pk).update(budget_period="month")
    assert post(secret).status_code == 429  # the day's request is in the month too


def test_refused_requests_do_not_move_the_keys_fair_share_clock() -> None:
    key, secret = make_key(budget_tokens=ASK)
    first = InferenceRequest.objects.get(pk=post(secret).json()["request_id"])
    for _ in range(20):
        assert post(secret).status_code == 429
    ApiKey.objects.filter(pk=key.pk).update(budget_tokens=10 * ASK)
    second = InferenceRequest.objects.get(pk=post(secret).json()["request_id"])
    # one request's cost after the first, not twenty-one
    assert second.fair_at - first.fair_at < 3 * (first.fair_at - first.created_at)


def test_an_idempotent_replay_reserves_nothing() -> None:
    _, secret = make_key(budget_tokens=ASK)
    headers = {**bearer(secret), "Idempotency-Key": "once"}
    body = {"prompt": PROMPT, "max_tokens": 10}
    client = Client()
    statuses = [
        client.post("/api/v1/infer", body, content_type="application/json", headers=headers)
        for _ in range(2)
    ]
    assert [r.status_code for r in statuses] == [202, 200]


async def test_a_websocket_submit_over_budget_gets_the_refusal_with_its_reset(
    engine: Engine,
) -> None:
    from tests.test_websocket import connected

    _, secret = await database_sync_to_async(make_key)(budget_tokens=ASK)
    socket = await connected(headers=[(b"authorization", f"Bearer {secret}".encode())])
    for _ in range(2):
        await socket.send_json_to({"prompt": PROMPT, "max_tokens": 10, "stream": False})
    messages = [await socket.receive_json_from(timeout=5) for _ in range(3)]
    refusal = next(m for m in messages if m["type"] == "error")
    assert refusal["error"]["code"] == "budget_exceeded" and refusal["error"]["reset_at"]
    await socket.disconnect()
