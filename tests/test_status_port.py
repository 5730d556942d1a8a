"""The worker's status port: /metrics for Prometheus, /healthz for liveness."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from harness.processes import free_port
from pipeline.status_port import serve_status
from pipeline.worker import Engine


def test_healthz_follows_the_heartbeat_and_metrics_stay_served() -> None:
    state = {"alive": True}
    server = serve_status(free_port(), "127.0.0.1", lambda: state["alive"])
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert httpx.get(f"{url}/healthz").status_code == 200
        state["alive"] = False
        stalled = httpx.get(f"{url}/healthz")
        assert stalled.status_code == 503 and b"stopped beating" in stalled.content
        assert "orchestrator_" in httpx.get(f"{url}/metrics").text
    finally:
        server.shutdown()


@pytest.mark.django_db(transaction=True)
async def test_the_engine_is_alive_while_it_runs_and_not_after(engine: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.05)
    assert engine.alive()
    await engine.stop(grace=0)
    await asyncio.sleep(3 * engine.config.poll_interval + 0.1)
    assert not engine.alive()


def test_a_blocked_event_loop_stops_the_heartbeat() -> None:
    """What the probe is for: sync work that never yields starves the loop."""

    async def scenario() -> bool:
        from pipeline.worker import EngineConfig

        engine = Engine(EngineConfig.from_settings())
        beating = asyncio.create_task(engine._beat_loop())
        await asyncio.sleep(0)
        time.sleep(3 * engine.config.poll_interval + 0.1)  # the loop is stuck here
        alive = engine.alive()
        beating.cancel()
        return alive

    assert asyncio.run(scenario()) is False
