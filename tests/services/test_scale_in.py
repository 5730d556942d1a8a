"""A Kubernetes scale-in on real processes: a busy worker gets SIGTERM while
another runs. With the grace the manifests give (deploy/k8s/base), every request
completes exactly once and the worker is gone before its SIGKILL would come."""

from __future__ import annotations

import asyncio
import signal
import time
import tomllib
from collections.abc import Iterator

import pytest
import yaml

from harness.processes import manage, running
from inference.models import InferenceRequest
from tests.deploy.rendered import K8S
from tests.services.conftest import Stack
from tests.services.test_scaled_mode import assert_streamed_exactly_once, results_of, submit_all

pytestmark = pytest.mark.services

TOKEN_DELAY = 0.2  # long answers stay under the default max_tokens (256)


def manifest_graces() -> tuple[float, float]:
    """(the app's shutdown grace, the pod's termination grace) of a worker."""
    config = tomllib.loads((K8S / "base" / "orchestrator.toml").read_text())
    worker = yaml.safe_load((K8S / "base" / "worker.yaml").read_text().split("\n---")[0])
    pod = worker["spec"]["template"]["spec"]
    return config["worker"]["shutdown_grace_seconds"], pod["terminationGracePeriodSeconds"]


@pytest.fixture
def workers_stopped_after(stack: Stack) -> Iterator[None]:
    yield
    stack.stop_workers()


@pytest.mark.usefixtures("workers_stopped_after")
def test_a_worker_scaled_in_mid_work_loses_and_repeats_nothing(stack: Stack, db_access) -> None:  # type: ignore[no-untyped-def]
    grace, termination = manifest_graces()
    env = {
        **stack.env,
        "ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": str(grace),
        "ORCHESTRATOR_ECHO_TOKEN_DELAY": str(TOKEN_DELAY),
    }
    leaving = manage("run_pipeline", "--concurrency", "20", env=env, log=stack.logs / "leaving.log")
    with running(leaving):
        # Short ones finish within the grace; long ones cannot and are handed back.
        long_words = int((grace + 3) / TOKEN_DELAY)
        prompts = [f"short {i} " + " ".join(["s"] * 20) for i in range(10)]
        prompts += [f"long {i} " + " ".join(["l"] * long_words) for i in range(3)]
        ids = asyncio.run(submit_all(stack.base_url, prompts))
        deadline = time.monotonic() + 30
        while InferenceRequest.objects.filter(pk__in=ids, status="processing").count() < len(ids):
            assert time.monotonic() < deadline, "the leaving worker never took them all"
            time.sleep(0.05)
        stack.start_worker(concurrency=20, token_delay=TOKEN_DELAY)
        began = time.monotonic()
        leaving.send_signal(signal.SIGTERM)  # what the kubelet sends on scale-in
        leaving.wait(timeout=termination + 5)
        assert time.monotonic() - began < termination, "it would have been SIGKILLed"
    results = asyncio.run(results_of(stack.base_url, ids))
    for request_id, prompt in zip(ids, prompts, strict=True):
        assert results[request_id]["result"] == prompt
        row = assert_streamed_exactly_once(request_id, prompt)
        assert row.attempt == (2 if prompt.startswith("long") else 1)
