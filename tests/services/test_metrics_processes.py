"""Metrics with web and worker as separate processes: each is scraped on its own."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import free_port
from tests.services.conftest import Stack
from tests.services.test_scaled_mode import results_of, submit_all

pytestmark = pytest.mark.services


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_worker_metrics_are_served_on_the_worker_port_and_http_metrics_by_web(stack: Stack) -> None:
    port = free_port()
    stack.start_worker(concurrency=10, metrics_port=port)
    ids = asyncio.run(submit_all(stack.base_url, [f"metrics {i} a b c" for i in range(20)]))
    asyncio.run(results_of(stack.base_url, ids))
    worker = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert total(worker, "orchestrator_requests_total", status="completed") == 20
    assert total(worker, "orchestrator_tokens_total", direction="completion") == 20 * 5
    assert total(worker, "orchestrator_stage_duration_seconds_count", stage="inference") == 20
    web = httpx.get(f"{stack.base_url}/metrics").text
    assert total(web, "orchestrator_http_requests_total", route="/api/v1/infer", status="202") >= 20
    assert total(web, "orchestrator_requests_submitted_total", transport="rest") >= 20
    assert "orchestrator_queue_depth" in web
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").text == "ok\n"  # the liveness probe
    stack.stop_workers()
