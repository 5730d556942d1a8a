"""Budgets on PostgreSQL under concurrent transactions (READ COMMITTED, row locks):
a finished request folds into its ledger once, and an Idempotency-Key retry racing
its original gets the original, not the budget's 429."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction

from inference import budgets, services
from inference.auth import Caller
from inference.models import BudgetLedger, InferenceRequest, Status
from tests.keys import make_key

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def in_thread(work: Callable[[], Any], results: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(work())
        except Exception as exc:  # reported to the test
            results.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def overlapping(first: Callable[[], Any], second: Callable[[], Any], go: threading.Event) -> tuple:
    """``first`` starts and holds its transaction until ``second`` has started."""
    results: tuple[list[Any], list[Any]] = ([], [])
    one = in_thread(first, results[0])
    time.sleep(0.3)
    two = in_thread(second, results[1])
    time.sleep(0.3)
    go.set()
    one.join(10)
    two.join(10)
    return results[0][0], results[1][0]


def test_admissions_on_both_sides_of_midnight_fold_a_request_once() -> None:
    assert connection.vendor == "postgresql"
    key, _ = make_key(budget_tokens=10_000, budget_period="day")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    midnight = day + timedelta(days=1)
    request = InferenceRequest.objects.create(
        api_key=key,
        prompt="x",
        status=Status.COMPLETED,
        prompt_tokens=60,
        completion_tokens=40,
        finished_at=day + timedelta(hours=1),
        budget_period=day,
        budget_reserved_tokens=13,
    )
    BudgetLedger.objects.create(api_key=key, period_start=day)
    go = threading.Event()

    def before_midnight() -> tuple[int, Any]:  # its transaction stays open a while
        with transaction.atomic():
            seen = budgets.used(key.prefix, day, midnight, midnight - timedelta(seconds=1))
            go.wait(10)
            return seen

    def after_midnight() -> tuple[int, Any]:
        with transaction.atomic():
            tomorrow = midnight + timedelta(days=1)
            return budgets.used(key.prefix, midnight, tomorrow, midnight + timedelta(seconds=1))

    seen_before, seen_after = overlapping(before_midnight, after_midnight, go)
    assert seen_before[0] == 100 and seen_after[0] == 0
    assert BudgetLedger.objects.get(api_key=key, period_start=day).tokens == 100  # not 200
    assert InferenceRequest.objects.get(pk=request.pk).budget_settled


def test_an_idempotent_retry_racing_its_original_gets_the_original() -> None:
    key, _ = make_key(budget_tokens=13)

    def submission() -> services.Submission:
        return services.Submission(
            prompt="one two three",
            params={"max_tokens": 10},
            idempotency_key="same",
            caller=Caller(key=key),
        )

    go = threading.Event()

    def original() -> bool:
        with transaction.atomic():  # it commits a little late
            _, created = services.submit_request(submission(), ring=False)
            go.wait(10)
            return created

    def retry() -> tuple[str, bool]:
        request, created = services.submit_request(submission(), ring=False)
        return str(request.pk), created

    created, (retried, retry_created) = overlapping(original, retry, go)
    assert created is True and retry_created is False
    assert retried == str(InferenceRequest.objects.get(idempotency_key="same").pk)
