"""POST /api/v1/infer/batch: many durable requests at once, all or nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from inference.models import InferenceRequest, Status
from pipeline.worker import Engine
from tests.conftest import finished
from tests.keys import bearer, make_key

URL = "/api/v1/infer/batch"


def post(client: Client, items: list[dict[str, Any]], **headers: str) -> Any:
    return client.post(URL, {"requests": items}, "application/json", headers=headers)


@pytest.mark.django_db
def test_a_batch_is_accepted_as_ordinary_requests_in_order_by_one_insert(client: Client) -> None:
    items = [{"prompt": f"prompt {i}", "max_tokens": 5 + i} for i in range(50)]
    with CaptureQueriesContext(connection) as queries:
        response = post(client, items)
    assert response.status_code == 202
    accepted = response.json()["requests"]
    assert len(accepted) == 50 and all(r["status"] == "pending" for r in accepted)
    assert all(r["stream_token"] for r in accepted)
    rows = InferenceRequest.objects.in_bulk([r["request_id"] for r in accepted])
    assert [rows[UUID(r["request_id"])].prompt for r in accepted] == [i["prompt"] for i in items]
    assert rows[UUID(accepted[7]["request_id"])].params == {"max_tokens": 12}
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    # Multi-row INSERTs: one on PostgreSQL; SQLite's cap on bound variables splits it.
    assert len(inserts) == (1 if connection.vendor == "postgresql" else 3)


def UUID(value: str):  # type: ignore[no-untyped-def]
    import uuid

    return uuid.UUID(value)


@pytest.mark.django_db
def test_one_invalid_item_refuses_the_batch_naming_it_by_index(client: Client) -> None:
    items = [
        {"prompt": "fine"},
        {"prompt": "fine"},
        {"prompt": "   "},
        {"prompt": "x", "max_token": 3},
    ]
    response = post(client, items)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "requests[2].prompt"
    assert error["message"].startswith("requests[2].prompt: ")
    assert "max_token" in str(error["fields"]["requests"]["3"])
    assert not InferenceRequest.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"requests": []}, "requests"),
        ({"requests": [{"prompt": "x"}] * 1001}, "requests"),
        ({"requests": [{"prompt": "x"}], "stream": True}, "stream"),
        ({"prompts": ["x"]}, "prompts"),
    ],
)
def test_the_batch_itself_is_validated(client: Client, body: dict, param: str) -> None:  # type: ignore[type-arg]
    response = client.post(URL, body, "application/json")
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert not InferenceRequest.objects.exists()


@pytest.mark.django_db
def test_a_batch_that_does_not_fit_the_keys_slots_is_refused_whole(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_IN_FLIGHT = 3
    _, secret = make_key()
    client = Client(headers=bearer(secret))
    refused = post(client, [{"prompt": f"p{i}"} for i in range(4)])
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_in_flight"
    assert not InferenceRequest.objects.exists()
    assert (
        post(client, [{"prompt": f"p{i}"} for i in range(3)]).status_code == 202
    )  # slots given back


@pytest.mark.django_db
def test_a_batch_over_the_keys_budget_is_refused_whole() -> None:
    _, secret = make_key(budget_tokens=3 * 13 + 5)
    client = Client(headers=bearer(secret))
    item = {"prompt": "one two three", "max_tokens": 10}  # 13 tokens reserved each
    accepted = post(client, [item] * 2)
    assert accepted.status_code == 202 and accepted["x-budget-remaining-tokens"] == "18"
    refused = post(client, [item] * 2)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    too_big = post(client, [item] * 4)  # could not fit even an untouched budget
    assert (
        too_big.status_code == 400 and too_big.json()["error"]["code"] == "request_exceeds_budget"
    )
    assert InferenceRequest.objects.count() == 2


@pytest.mark.django_db
def test_a_batch_that_would_overfill_the_queue_is_a_503(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_PENDING = 5
    assert post(client, [{"prompt": "x"}] * 4).status_code == 202
    refused = post(client, [{"prompt": "x"}] * 2)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
    assert InferenceRequest.objects.count() == 4


@pytest.mark.django_db(transaction=True)
async def test_every_request_of_a_batch_runs_to_its_own_answer(engine: Engine) -> None:
    from channels.db import database_sync_to_async

    items = [{"prompt": f"answer number {i}"} for i in range(20)]
    response = await database_sync_to_async(post)(Client(), items)
    done = [await finished(r["request_id"]) for r in response.json()["requests"]]
    assert [(r.status, r.result) for r in done] == [(Status.COMPLETED, i["prompt"]) for i in items]
