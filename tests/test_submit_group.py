"""Group commit of concurrent submits (services.SubmitGroup / submit_many): many
submits, one thread hop and one transaction, each with its own answer."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError

from inference import admission, services
from inference.admission import Refusal
from inference.auth import Caller
from inference.models import InferenceRequest
from tests.keys import make_key

pytestmark = pytest.mark.django_db(transaction=True)


def submission(prompt: str = "hello", **fields) -> services.Submission:  # type: ignore[no-untyped-def]
    return services.Submission(prompt=prompt, **fields)


async def test_concurrent_submits_are_stored_in_groups(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    groups: list[int] = []
    store = services.submit_many

    def recorded(submissions):  # type: ignore[no-untyped-def]
        groups.append(len(submissions))
        return store(submissions)

    monkeypatch.setattr(services, "submit_many", recorded)
    answers = await asyncio.gather(
        *(
            services.asubmit_request(submission(f"prompt {i}"), database_sync_to_async)
            for i in range(20)
        )
    )
    assert sum(groups) == 20 and max(groups) > 1 and len(groups) < 20
    assert all(created for _, created in answers)
    stored = {r.pk: r.prompt async for r in InferenceRequest.objects.all()}
    assert {request.pk: request.prompt for request, _ in answers} == stored
    assert sorted(stored.values()) == sorted(f"prompt {i}" for i in range(20))


def test_a_refusal_in_a_group_is_that_submit_s_answer_alone() -> None:
    no_rights = Caller(user=SimpleNamespace(pk=1), perms=frozenset())  # staff without "add"
    outcomes = services.submit_many(
        [submission("a"), submission("b", caller=no_rights), submission("c")]
    )
    assert isinstance(outcomes[1], Refusal) and outcomes[1].status == 403
    first, third = outcomes[0], outcomes[2]
    assert isinstance(first, tuple) and isinstance(third, tuple)
    assert sorted(InferenceRequest.objects.values_list("prompt", flat=True)) == ["a", "c"]


def test_an_idempotent_submit_goes_alone_and_its_repeat_gets_the_first_row() -> None:
    outcomes = services.submit_many(
        [
            submission("same", idempotency_key="k1"),
            submission("same", idempotency_key="k1"),
            submission("other"),
        ]
    )
    (first, created), (again, created_again), (_, other_created) = outcomes  # type: ignore[misc]
    assert created and not created_again and other_created
    assert again.pk == first.pk
    assert InferenceRequest.objects.count() == 2


def test_a_budgeted_key_s_submits_in_one_group_are_counted_one_by_one() -> None:
    key, _ = make_key(budget_tokens=1)
    caller = Caller(key=key)
    ask = submission("x" * 40, caller=caller).most_usage("echo")[0]
    key.budget_tokens = ask + ask // 2  # room for one, not two
    key.save()
    caller = Caller(key=key)
    outcomes = services.submit_many(
        [submission("x" * 40, caller=caller), submission("x" * 40, caller=caller)]
    )
    assert isinstance(outcomes[0], tuple)
    assert isinstance(outcomes[1], Refusal) and outcomes[1].code == "budget_exceeded"
    assert InferenceRequest.objects.count() == 1


def test_a_failed_shared_insert_stores_none_and_gives_their_slots_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    released = []
    monkeypatch.setattr(admission, "release_in_flight", lambda caller, ids: released.extend(ids))

    def down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("the database went away")

    monkeypatch.setattr(InferenceRequest.objects, "bulk_create", down)
    outcomes = services.submit_many([submission("a"), submission("b")])
    assert all(isinstance(outcome, OperationalError) for outcome in outcomes)
    assert len(released) == 2
    assert not InferenceRequest.objects.exists()


async def test_a_leader_whose_client_leaves_is_stored_and_the_next_group_goes_on(
    monkeypatch,
) -> None:  # type: ignore[no-untyped-def]
    entered = asyncio.Event()
    store = services.submit_many

    def slow(submissions):  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(_set(entered), loop)
        time.sleep(0.2)  # the leader's client leaves meanwhile
        return store(submissions)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(services, "submit_many", slow)
    leader = asyncio.create_task(
        services.asubmit_request(submission("leader"), database_sync_to_async)
    )
    await asyncio.sleep(0)  # the leader takes the (empty) queue and starts its group
    await entered.wait()
    followers = [
        asyncio.create_task(services.asubmit_request(submission(f"f{i}"), database_sync_to_async))
        for i in range(3)
    ]
    await asyncio.sleep(0.01)
    leader.cancel()
    answers = await asyncio.gather(*followers)
    assert all(created for _, created in answers)
    with pytest.raises(asyncio.CancelledError):
        await leader
    prompts = sorted([r.prompt async for r in InferenceRequest.objects.all()])
    assert prompts == ["f0", "f1", "f2", "leader"]  # accepted before its client left


async def _set(event: asyncio.Event) -> None:
    event.set()
