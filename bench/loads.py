"""Client workloads: closed loops over keep-alive connections, and WebSockets.

Everything here runs in the bench process, never in a server process. Loops
are closed (each connection sends its next request when the last one is
answered) and bounded by time or count, so a run always stops by itself.
Connections are spread round-robin over the stack's web processes.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.rawhttp import Connection, HTTPStatusError

INFER = "/api/v1/infer"


@dataclass
class Samples:
    """What a load saw: latencies of the successful operations, and the rest."""

    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000

    def problems(self, expected_status: int = 202) -> list[str]:
        """Everything that should not have happened (refusals included)."""
        bad = {s: n for s, n in self.statuses.items() if s != expected_status}
        found = [f"{n} x HTTP {s}" for s, n in sorted(bad.items())]
        return found + [f"{n} x {error}" for error, n in self.errors.most_common()]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values (so no target is ever "met")."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(round(p / 100 * len(ordered) + 0.5) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


Operation = Callable[[Connection, Samples], Awaitable[None]]


async def closed_loop(
    urls: list[str],
    connections: int,
    operation: Operation,
    seconds: float | None = None,
    total: int | None = None,
) -> Samples:
    """Run ``operation`` on ``connections`` connections until ``seconds`` pass
    or ``total`` operations started; failed connections are reopened."""
    samples = Samples()
    deadline = time.perf_counter() + seconds if seconds is not None else float("inf")
    budget = [total if total is not None else 1 << 62]

    async def run(index: int) -> None:
        connection = Connection(urls[index % len(urls)])
        try:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                try:
                    await operation(connection, samples)
                except (OSError, asyncio.IncompleteReadError, HTTPStatusError, ValueError) as exc:
                    samples.errors[type(exc).__name__] += 1
                    await connection.close()
        finally:
            await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(connections)))
    samples.elapsed = time.perf_counter() - began
    return samples


def submit(body: dict[str, Any]) -> Operation:
    """``POST /api/v1/infer``: the latency of a durable (committed) submit."""

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        response = await connection.request("POST", INFER, body)
        samples.statuses[response.status] += 1
        if response.status == 202:
            samples.latencies.append(time.perf_counter() - began)

    return operation


def submit_and_stream(body: dict[str, Any]) -> Operation:
    """Submit, then read ``GET /api/v1/stream/<id>`` to its ``complete`` event:
    end-to-end latency, checked against the echoed prompt."""
    expected = body["prompt"]

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        response = await connection.request("POST", INFER, body)
        samples.statuses[response.status] += 1
        if response.status != 202:
            return
        request_id = response.json()["request_id"]
        text, final = "", None
        async for event, data in connection.events(f"/api/v1/stream/{request_id}"):
            if event == "token":
                text += json.loads(data)["data"]
            elif event in ("complete", "error"):
                final = (event, json.loads(data))
        if final is None or final[0] != "complete" or final[1]["result"] != expected:
            samples.errors[f"stream ended {final and final[0]}"] += 1
        elif text != expected:
            samples.errors["tokens differ from the result"] += 1
        else:
            samples.latencies.append(time.perf_counter() - began)

    return operation


async def first_token_sse(base_url: str, body: dict[str, Any], count: int) -> Samples:
    """Submit then stream, one at a time: seconds from submit to the first token."""
    samples = Samples()
    connection = Connection(base_url)
    try:
        for _ in range(count):
            began = time.perf_counter()
            response = await connection.request("POST", INFER, body)
            samples.statuses[response.status] += 1
            request_id = response.json()["request_id"]
            first = None
            async for event, _data in connection.events(f"/api/v1/stream/{request_id}"):
                if event == "token" and first is None:
                    first = time.perf_counter() - began
                elif event == "error":
                    samples.errors[f"stream error {_data[:80]}"] += 1
            if first is not None:
                samples.latencies.append(first)
    finally:
        await connection.close()
    return samples


async def first_token_ws(ws_url: str, origin: str, body: dict[str, Any], count: int) -> Samples:
    """The same over one WebSocket: from sending the prompt to the first token."""
    samples = Samples()
    async with connect(ws_url, origin=origin) as socket:  # type: ignore[arg-type]
        for _ in range(count):
            began = time.perf_counter()
            await socket.send(json.dumps(body))
            first = None
            while True:
                message = json.loads(await socket.recv())
                if message["type"] == "token" and first is None:
                    first = time.perf_counter() - began
                elif message["type"] in ("result", "error"):
                    break
            if message["type"] == "error":
                samples.errors[message["error"].get("code", "error")] += 1
            elif first is not None:
                samples.latencies.append(first)
    return samples


async def first_token_direct(base_url: str, body: dict[str, Any], count: int) -> Samples:
    """The upstream alone, same client: from the request to its first content delta."""
    samples = Samples()
    for _ in range(count):
        connection = Connection(base_url)
        began = time.perf_counter()
        try:
            async for _event, data in connection.events("/v1/chat/completions", body, "POST"):
                chunk = json.loads(data)
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    samples.latencies.append(time.perf_counter() - began)
                    break
        finally:
            await connection.close()
    return samples


class SocketSwarm:
    """Many WebSockets to one server: held idle, then some stream at once."""

    def __init__(self, ws_url: str, origin: str) -> None:
        self.ws_url = ws_url
        self.origin = origin
        self.sockets: list[ClientConnection] = []
        self.errors: Counter[str] = Counter()

    async def open(self, count: int, parallel: int = 50) -> float:
        """Open ``count`` sockets (``parallel`` handshakes at a time); seconds taken."""
        gate = asyncio.Semaphore(parallel)

        async def one() -> None:
            async with gate:
                try:
                    socket = await connect(
                        self.ws_url,
                        origin=self.origin,  # type: ignore[arg-type]
                        open_timeout=60,
                        ping_interval=None,
                        compression=None,
                    )
                except (OSError, TimeoutError, ValueError) as exc:
                    self.errors[type(exc).__name__] += 1
                    return
                self.sockets.append(socket)

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - began

    async def stream(self, count: int, body: dict[str, Any], timeout: float) -> Samples:
        """``count`` sockets each submit one prompt at once and read it to the end."""
        samples = Samples()

        async def one(socket: ClientConnection) -> None:
            began = time.perf_counter()
            await socket.send(json.dumps(body))
            text = ""
            while True:
                message = json.loads(await socket.recv())
                if message["type"] == "token":
                    text += message["data"]
                elif message["type"] in ("result", "error"):
                    break
            if message["type"] == "result" and text == message["result"] == body["prompt"]:
                samples.latencies.append(time.perf_counter() - began)
            else:
                samples.errors[f"{message['type']} {message.get('status')}"] += 1

        began = time.perf_counter()
        tasks = [asyncio.create_task(one(socket)) for socket in self.sockets[:count]]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            samples.errors["timed out"] += len(pending)
        for task in done:
            if task.exception() is not None:
                samples.errors[type(task.exception()).__name__] += 1
        samples.elapsed = time.perf_counter() - began
        return samples

    async def close(self) -> None:
        sockets, self.sockets = self.sockets, []
        gate = asyncio.Semaphore(200)

        async def one(socket: ClientConnection) -> None:
            async with gate:
                await socket.close()

        await asyncio.gather(*(one(s) for s in sockets), return_exceptions=True)
