"""Every final request says why it ended and what it consumed: a cancelled or
failed one too (it was billed for the tokens it streamed)."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from inference import services
from inference.models import FinishReason, InferenceRequest, Status
from inference.streaming import Token, follow
from pipeline.worker import Engine
from tests.conftest import asubmit, finished

pytestmark = pytest.mark.django_db(transaction=True)


async def tokens_seen(request_id, n: int) -> None:  # type: ignore[no-untyped-def]
    seen = 0
    async for event in follow(request_id):
        if isinstance(event, Token):
            seen += 1
            if seen >= n:
                return


async def test_a_cancelled_stream_reports_what_it_consumed(engine: Engine) -> None:
    request = await asubmit("count me", backend="endless")
    await tokens_seen(request.pk, 5)
    await database_sync_to_async(services.cancel_request)(request.pk)
    for _ in range(100):  # the worker records it once it has stopped
        row = await InferenceRequest.objects.aget(pk=request.pk)
        if row.completion_tokens:
            break
        await asyncio.sleep(0.02)
    assert row.status == Status.CANCELLED and row.finish_reason == FinishReason.CANCELLED
    assert row.completion_tokens >= 5
    assert row.prompt_tokens > 0 and row.messages[-1]["content"] == "count me"


async def test_a_failed_request_reports_what_it_streamed(engine: Engine) -> None:
    request = await finished((await asubmit("fail later", backend="failing-midway")).pk)
    assert request.status == Status.FAILED and request.finish_reason == FinishReason.ERROR
    assert request.completion_tokens == 3 and request.messages


async def test_an_answer_cut_at_max_tokens_says_so_on_every_transport(engine: Engine) -> None:
    request = await finished((await asubmit("one two three four", max_tokens=2)).pk)
    assert request.finish_reason == FinishReason.LENGTH
    body = (await database_sync_to_async(Client().get)(f"/api/v1/result/{request.pk}")).json()
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2


def test_expired_requests_say_so() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from tests.conftest import submit

    request = submit("too late")
    InferenceRequest.objects.filter(pk=request.pk).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    assert InferenceRequest.objects.expire_overdue() == 1
    request.refresh_from_db()
    assert (request.status, request.finish_reason) == (Status.EXPIRED, FinishReason.EXPIRED)


# --- cost ------------------------------------------------------------------------

PRICES = {
    "echo": {"input_per_million": 1.5, "output_per_million": 6.0},
    "upstream/ok": {"input_per_million": 0.25, "output_per_million": 2.0},
}


async def test_cost_comes_from_the_price_table(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    from decimal import Decimal

    from inference.pricing import price_version

    settings.ORCHESTRATOR_PRICES = PRICES
    done = await finished((await asubmit("one two three four five")).pk)
    expected = (Decimal("1.5") * done.prompt_tokens + 6 * done.completion_tokens) / 1_000_000
    assert done.cost == expected.quantize(Decimal("0.00000001")) > 0
    assert done.price_version == price_version() != ""
    assert done.model_used == "echo"
    body = (await database_sync_to_async(Client().get)(f"/api/v1/result/{done.pk}")).json()
    assert Decimal(body["cost"]) == done.cost and body["price_version"] == done.price_version
    settings.ORCHESTRATOR_PRICES = {}
    unpriced = await finished((await asubmit("free")).pk)
    assert (unpriced.cost, unpriced.price_version) == (0, "")


async def test_a_priced_upstream_model_and_a_hit_that_costs_nothing(
    engine: Engine,
    upstream,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.ORCHESTRATOR_PRICES = PRICES
    first = await finished((await asubmit("the quick brown fox", temperature=0.0)).pk)
    hit = await finished((await asubmit("the quick brown fox", temperature=0.0)).pk)
    assert first.model_used == "ok" and first.cost > 0
    assert hit.cache_status == "hit" and hit.cost == 0 and hit.usage == first.usage


async def test_a_cancelled_request_is_billed_for_what_it_streamed(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_PRICES = {
        "endless": {"input_per_million": 1e6, "output_per_million": 1e6}
    }
    request = await asubmit("bill me", backend="endless")
    await tokens_seen(request.pk, 5)
    await database_sync_to_async(services.cancel_request)(request.pk)
    for _ in range(100):
        row = await InferenceRequest.objects.aget(pk=request.pk)
        if row.completion_tokens:
            break
        await asyncio.sleep(0.02)
    assert row.cost == row.prompt_tokens + row.completion_tokens > 5  # a dollar a token


async def test_a_backend_no_longer_configured_fails_the_request_cleanly(engine: Engine) -> None:
    """Accounting for a failure must not fail in turn (it looks the backend up)."""
    row = await InferenceRequest.objects.acreate(prompt="p", session_id="s", backend="gone")
    done = await finished(row.pk, timeout=5)
    assert (done.status, done.error_code, done.finish_reason) == (
        "failed",
        "internal_error",
        "error",
    )


# --- what upstreams report ------------------------------------------------------------


async def test_an_openai_compatible_upstreams_own_usage_is_recorded(
    engine: Engine,
    upstream,  # type: ignore[no-untyped-def]
) -> None:
    done = await finished((await asubmit("three little words")).pk)
    assert done.usage == {  # what the fake upstream's usage chunk said
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
        "estimated": False,
    }


async def test_an_upstream_without_usage_gets_an_estimate_marked_as_one(
    engine: Engine,
    upstream,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.ORCHESTRATOR_BACKENDS = {
        **settings.ORCHESTRATOR_BACKENDS,
        "quiet": {
            **settings.ORCHESTRATOR_BACKENDS["upstream"],
            "options": {
                **settings.ORCHESTRATOR_BACKENDS["upstream"]["options"],
                "model": "no-usage",
            },
        },
    }
    done = await finished((await asubmit("three little words", backend="quiet")).pk)
    expected_prompt = sum(max(1, len(m["content"]) // 4) for m in done.messages)
    assert (done.prompt_tokens, done.completion_tokens) == (expected_prompt, 3)
    assert done.usage_estimated is True
    body = (await database_sync_to_async(Client().get)(f"/api/v1/result/{done.pk}")).json()
    assert body["usage"]["estimated"] is True


async def test_an_anthropic_upstreams_own_usage_is_recorded(
    engine: Engine,
    upstream,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.ORCHESTRATOR_BACKENDS = {
        **settings.ORCHESTRATOR_BACKENDS,
        "claude": {
            "class": "pipeline.backends.anthropic.AnthropicBackend",
            "options": {"base_url": upstream.url, "api_key": "sk-ant", "model": "ok"},
        },
    }
    done = await finished((await asubmit("four words from claude", backend="claude")).pk)
    assert (done.prompt_tokens, done.completion_tokens, done.usage_estimated) == (13, 4, False)
    assert done.model_used == "ok"
