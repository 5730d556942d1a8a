"""Rate limits with two web processes sharing Redis: a key's budget is one
budget, whichever process answers (no 2x leak), and the headers say so."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness.processes import create_api_key, free_port, manage, running, wait_until_serving
from tests.conftest import start_of_a_fresh_window
from tests.services.conftest import Stack

pytestmark = pytest.mark.services

RATE = 20
IN_FLIGHT = 5


def bearer_key(env: dict[str, str], *args: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_key(env, *args)}"}


@pytest.fixture(scope="module")
def two_web_processes(stack: Stack) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Two more web processes on the stack's database and Redis, keys required,
    no worker (so accepted requests stay in flight); and their environment."""
    stack.stop_workers()
    env = {
        **stack.env,
        "ORCHESTRATOR_AUTH_REQUIRED": "true",
        "ORCHESTRATOR_REQUESTS_PER_MINUTE": str(RATE),
        "ORCHESTRATOR_MAX_IN_FLIGHT": str(IN_FLIGHT),
    }
    ports = [free_port(), free_port()]
    webs = [
        manage("serve", "--port", str(port), env=env, log=stack.logs / f"limits-web-{port}.log")
        for port in ports
    ]
    with running(webs[0]), running(webs[1]):
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, web in zip(urls, webs, strict=True):
            wait_until_serving(url, web)
        yield urls, env


def test_the_per_minute_budget_is_shared_by_both_processes(two_web_processes) -> None:  # type: ignore[no-untyped-def]
    urls, env = two_web_processes
    headers = bearer_key(env)
    start_of_a_fresh_window()
    statuses, remaining = [], []
    with httpx.Client(timeout=10) as client:
        for i in range(2 * RATE):
            response = client.get(f"{urls[i % 2]}/api/v1/requests/", headers=headers)
            statuses.append(response.status_code)
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert statuses == [200] * RATE + [429] * RATE  # not 2 x RATE
    assert remaining[:RATE] == list(range(RATE - 1, -1, -1))
    refused = response
    assert refused.headers["RateLimit-Policy"] == f'"requests";q={RATE};w=60'
    reset = int(refused.headers["Retry-After"])
    assert refused.headers["RateLimit"] == f'"requests";r=0;t={reset}'
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_in_flight_slots_are_shared_by_both_processes(two_web_processes) -> None:  # type: ignore[no-untyped-def]
    urls, env = two_web_processes
    headers = bearer_key(env, "--requests-per-minute", "0")
    with httpx.Client(timeout=10) as client:
        statuses = [
            client.post(f"{urls[i % 2]}/api/v1/infer", json={"prompt": "x"}, headers=headers)
            for i in range(2 * IN_FLIGHT)
        ]
    assert [r.status_code for r in statuses] == [202] * IN_FLIGHT + [429] * IN_FLIGHT
    busy = statuses[-1]
    assert busy.json()["error"]["code"] == "too_many_in_flight"
    assert busy.headers["RateLimit"].startswith('"in_flight";r=0;')
    assert int(busy.headers["Retry-After"]) >= 1


def test_a_token_budget_admits_exactly_what_fits_across_both_processes(two_web_processes) -> None:  # type: ignore[no-untyped-def]
    """20 concurrent submits, half to each process, each reserving 13 tokens of a
    budget of 5 x 13 + 12: five are admitted (the ledger row serialises them on
    PostgreSQL), the rest refused with the budget's 429."""
    urls, env = two_web_processes
    headers = bearer_key(
        env, "--requests-per-minute", "0", "--max-in-flight", "0", "--budget-tokens", "77"
    )
    body = {"prompt": "one two three", "max_tokens": 10}  # 3 + 10 tokens reserved

    def submit(i: int) -> httpx.Response:
        return httpx.post(f"{urls[i % 2]}/api/v1/infer", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(submit, range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 5 + [429] * 15
    refused = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert {r.headers["x-should-retry"] for r in refused} == {"false"}
    remaining = sorted(
        int(r.headers["x-budget-remaining-tokens"]) for r in responses if r.status_code == 202
    )
    assert remaining == [12, 25, 38, 51, 64]
