"""Assemble: cited passages, the session's earlier turns, the token budget."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from inference import services
from inference.models import InferenceRequest
from pipeline.context import RequestSnapshot
from pipeline.stages.assemble import earlier_turns, fit_to_budget, system_message
from pipeline.worker import Engine
from tests.conftest import asubmit, finished

pytestmark = pytest.mark.django_db(transaction=True)


def test_passages_are_numbered_for_citation_after_the_system_prompt(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_SYSTEM_PROMPT = "Be brief."
    message = system_message(
        [{"title": "Zorblax", "text": "Quenthar-9 is the capital."}, {"title": "B", "text": "b"}]
    )
    assert message["role"] == "system"
    assert message["content"].startswith("Be brief.")
    assert "[1] Zorblax: Quenthar-9 is the capital." in message["content"]
    assert "[2] B: b" in message["content"] and "cite them like [1]" in message["content"]
    assert system_message([])["content"] == "Be brief."


def test_the_budget_drops_the_oldest_turns_and_keeps_the_system_prompt() -> None:
    system = {"role": "system", "content": "s" * 10}
    prompt = {"role": "user", "content": "p" * 10}
    history = []
    for i in range(5):
        history += [
            {"role": "user", "content": f"q{i}" * 5},
            {"role": "assistant", "content": f"a{i}" * 5},
        ]
    messages = fit_to_budget(system, history, prompt, budget=60, count=len)
    assert messages[0] is system and messages[-1] is prompt
    kept = messages[1:-1]
    assert kept == history[-len(kept) :] and len(kept) % 2 == 0
    assert sum(len(m["content"]) for m in messages) <= 60
    assert fit_to_budget(system, history, prompt, budget=5, count=len) == [system, prompt]


async def test_a_third_turn_sees_the_first_two(engine: Engine) -> None:
    first = await finished((await asubmit("first question", session_id="chat-1")).pk)
    second = await finished((await asubmit("second question", session_id="chat-1")).pk)
    await finished((await asubmit("unrelated", session_id="other")).pk)
    third = await finished((await asubmit("third question", session_id="chat-1")).pk)
    assert [m["content"] for m in third.messages[1:]] == [
        "first question",
        first.result,
        "second question",
        second.result,
        "third question",
    ]
    assert [m["role"] for m in third.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


async def test_a_conversation_begun_without_a_session_id_is_named_after_its_first_request(
    engine: Engine,
) -> None:
    first = await finished((await asubmit("first question")).pk)
    assert first.session_id == str(first.pk)
    second = await finished((await asubmit("follow-up", session_id=first.session_id)).pk)
    assert [m["content"] for m in second.messages[1:]] == [
        "first question",
        first.result,
        "follow-up",
    ]


def test_the_first_turn_of_a_server_named_session_looks_up_no_history(
    django_assert_num_queries,  # type: ignore[no-untyped-def]
) -> None:
    request = services.submit_request(services.Submission(prompt="hello"), ring=False)[0]
    with django_assert_num_queries(0):
        assert earlier_turns(RequestSnapshot.from_request(request)) == []
    request.session_id = "chosen-by-the-client"
    with django_assert_num_queries(1):
        assert earlier_turns(RequestSnapshot.from_request(request)) == []


async def test_a_long_session_is_trimmed_to_the_budget(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_CONTEXT_TOKENS = 300
    now = timezone.now()
    for i in range(20):  # twenty long, completed turns (echo counts ~4 chars a token)
        await InferenceRequest.objects.acreate(
            session_id="long",
            prompt=f"turn {i} " + "x" * 200,
            result="y" * 200,
            status="completed",
            backend="echo",
            created_at=now - timedelta(minutes=20 - i),
        )
    done = await finished((await asubmit("latest", session_id="long", max_tokens=50)).pk)
    assert done.messages[0]["role"] == "system" and done.messages[-1]["content"] == "latest"
    kept = [m["content"] for m in done.messages if m["role"] == "user"][:-1]
    assert kept and len(kept) < 20 and kept[-1].startswith("turn 19")
    assert sum(len(m["content"]) for m in done.messages) // 4 <= 300 - 50


async def test_retrieved_passages_are_stored_and_shown_to_the_model(engine: Engine) -> None:
    await database_sync_to_async(services.ingest_document)(
        "Zorblax", "The capital of the Zorblax Archipelago is Quenthar-9.", "z"
    )
    done = await finished((await asubmit("What is the capital of Zorblax?")).pk)
    assert [p["title"] for p in done.passages] == ["Zorblax"] and done.passages[0]["score"] > 0
    assert "Quenthar-9" in done.messages[0]["content"]
    off = await finished(
        (await asubmit("What is the capital of Zorblax?", rag={"enabled": False})).pk
    )
    assert off.passages == [] and "Quenthar-9" not in off.messages[0]["content"]


async def test_a_requests_own_system_prompt_replaces_the_configured_one(
    engine: Engine,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.ORCHESTRATOR_SYSTEM_PROMPT = "Be brief."
    own = await finished((await asubmit("hello", system="Answer in French.")).pk)
    default = await finished((await asubmit("hello")).pk)
    assert own.messages[0] == {"role": "system", "content": "Answer in French."}
    assert default.messages[0] == {"role": "system", "content": "Be brief."}
