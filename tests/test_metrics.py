"""Prometheus metrics: names, base units, low-cardinality labels, and that they move."""

from __future__ import annotations

import re

import pytest
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from pipeline.worker import Engine
from tests.conftest import asubmit, finished, submit

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db(transaction=True)
async def test_a_completed_request_moves_the_worker_metrics(engine: Engine) -> None:
    client = AsyncClient()
    before = scrape((await client.get("/metrics")).content.decode())
    request = await asubmit("one two three four")
    await finished(request.pk)
    response = await client.get("/metrics")
    assert response["Content-Type"].startswith("text/plain")
    after = scrape(response.content.decode())

    def grew(name: str, by: float = 1, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) == by, (name, labels)

    grew("orchestrator_requests_total", transport="rest", backend="echo", status="completed")
    grew("orchestrator_requests_submitted_total", transport="rest")
    grew("orchestrator_tokens_total", 4, direction="completion", backend="echo", model="echo")
    grew("orchestrator_key_tokens_total", 4, key="none", direction="completion")
    grew("orchestrator_request_duration_seconds_count", backend="echo")
    grew("orchestrator_queue_wait_seconds_count", priority="5")
    for stage in ("rag", "assemble", "inference", "post", "stream"):
        grew("orchestrator_stage_duration_seconds_count", stage=stage)
    grew("orchestrator_time_to_first_token_seconds_count", backend="echo", model="echo")
    assert value(after, "orchestrator_worker_in_flight") == 0


@pytest.mark.django_db
def test_queue_depth_counts_waiting_requests_by_priority(client: Client) -> None:
    submit(priority=9)
    submit(priority=9)
    submit(priority=1)
    samples = scrape(client.get("/metrics").content.decode())
    assert value(samples, "orchestrator_queue_depth", status="pending", priority="9") == 2
    assert value(samples, "orchestrator_queue_depth", status="pending", priority="1") == 1
    assert value(samples, "orchestrator_queue_depth", status="processing", priority="all") == 0


@pytest.mark.django_db
def test_labels_never_carry_ids_prompts_or_raw_paths(client: Client) -> None:
    request = submit("a secret prompt")
    client.get(f"/api/v1/status/{request.pk}")
    client.get("/api/v1/status/not-a-real-id-at-all")
    text = client.get("/metrics").content.decode()
    label_values = [v for (_, labels) in scrape(text) for _, v in labels]
    assert not any(UUID.search(v) or "secret" in v or "not-a-real" in v for v in label_values)


def test_metric_names_follow_the_conventions() -> None:
    from prometheus_client import REGISTRY

    names = {family.name for family in REGISTRY.collect() if family.name.startswith("orchestrator")}
    assert {
        "orchestrator_requests",
        "orchestrator_stage_duration_seconds",
        "orchestrator_build",
    } <= names
    assert all(not n.endswith("_ms") and not n.endswith("_milliseconds") for n in names)
