"""Client workloads: closed loops over keep-alive connections, open-loop
arrivals, and WebSockets.

Everything here runs in the bench process, never in a server process. Loops
are closed (each connection sends its next request when the last one is
answered), except ``open_loop`` (Poisson arrivals at a rate, whatever the
answers take); all are bounded by time or count, so a run always stops by
itself. Connections are spread round-robin over the stack's web processes.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.rawhttp import Connection, HTTPStatusError, Response

INFER = "/api/v1/infer"
CHAT = "/v1/chat/completions"
RESULT_WAIT = 10  # seconds of long-poll: the echo backend finishes well within it

# The response cache would answer a benchmark's repeated prompts without running
# them, and in-flight dedup would fold its concurrent ones into one backend call:
# every benchmark request opts out, so the numbers measure generation, not the
# cache (scenario g measures the cache, with bodies of its own).
NO_CACHE: dict[str, Any] = {"mode": "bypass"}


def uncached(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (native, WebSocket or /v1) with the cache bypassed."""
    return {**body, "cache": dict(NO_CACHE)}


# What a cacheable request's record says it was (``cache_status``): generated and
# stored, answered by an identical request's call in flight, answered from the
# store. Its ``Cache-Status`` header ends with the same word.
CACHE_OUTCOMES = ("stored", "collapsed", "hit")


@dataclass
class Samples:
    """What a load saw: latencies of the successful operations, and the rest."""

    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: Counter[int] = field(default_factory=Counter)  # of POST /api/v1/infer
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @classmethod
    def merged(cls, runs: Iterable[Samples]) -> Samples:
        """Several runs of one load as one (their rates weighted by their time)."""
        merged = cls()
        for run in runs:
            merged.latencies += run.latencies
            merged.statuses.update(run.statuses)
            merged.errors.update(run.errors)
            merged.elapsed += run.elapsed
        return merged

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def failed(self) -> int:
        """Operations that went wrong: errors, and submits not accepted (202)."""
        refused = sum(n for status, n in self.statuses.items() if status != 202)
        return sum(self.errors.values()) + refused

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
                except (OSError, asyncio.IncompleteReadError, HTTPStatusError) as exc:
                    samples.errors[_error_name(exc)] += 1
                    await connection.close()
                except (ValueError, LookupError, TypeError) as exc:  # a malformed answer
                    samples.errors[f"malformed answer ({type(exc).__name__})"] += 1
                    await connection.close()
        finally:
            await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(connections)))
    samples.elapsed = time.perf_counter() - began
    return samples


def _error_name(exc: Exception) -> str:
    return f"HTTP {exc.status}" if isinstance(exc, HTTPStatusError) else type(exc).__name__


def submit_batch(body: dict[str, Any], size: int) -> Operation:
    """``POST /api/v1/infer/batch`` of ``size`` copies of ``body``: the latency of
    one durable (committed) batch."""
    payload = {"requests": [body] * size}

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        response = await connection.request("POST", f"{INFER}/batch", payload)
        samples.statuses[response.status] += 1
        if response.status == 202 and len(response.json()["requests"]) == size:
            samples.latencies.append(time.perf_counter() - began)
        elif response.status == 202:
            samples.errors["a 202 without every request"] += 1

    return operation


def submit(body: dict[str, Any]) -> Operation:
    """``POST /api/v1/infer``: the latency of a durable (committed) submit."""

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        response = await connection.request("POST", INFER, body)
        samples.statuses[response.status] += 1
        if response.status == 202:
            samples.latencies.append(time.perf_counter() - began)

    return operation


async def _submitted(connection: Connection, samples: Samples, body: dict[str, Any]) -> str | None:
    """``POST /api/v1/infer``: the request id if accepted (202), else None."""
    response = await connection.request("POST", INFER, body)
    samples.statuses[response.status] += 1
    return str(response.json()["request_id"]) if response.status == 202 else None


def _check(
    samples: Samples, began: float, expected: str, failure: str | None, **answers: Any
) -> bool:
    """Count one finished operation: its latency since ``began`` if nothing failed
    and every answer is the echoed prompt (True), else what went wrong (False)."""
    wrong = [name for name, answer in answers.items() if answer != expected]
    if failure is None and wrong:
        failure = f"{' and '.join(wrong)} not the prompt"
    if failure is None:
        samples.latencies.append(time.perf_counter() - began)
    else:
        samples.errors[failure] += 1
    return failure is None


def submit_and_stream(body: dict[str, Any]) -> Operation:
    """Submit, then read ``GET /api/v1/stream/<id>`` to its ``complete`` event:
    end-to-end latency, checked against the echoed prompt."""
    expected = body["prompt"]

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        request_id = await _submitted(connection, samples, body)
        if request_id is None:
            return
        text, ending, final = "", None, {}
        async for event, data in connection.events(f"/api/v1/stream/{request_id}"):
            if event == "token":
                text += json.loads(data)["data"]
            elif event in ("complete", "error"):
                ending, final = event, json.loads(data)
        failure = None if ending == "complete" else f"stream ended {ending}"
        _check(samples, began, expected, failure, tokens=text, result=final.get("result"))

    return operation


def submit_and_poll(body: dict[str, Any]) -> Operation:
    """Submit, then long-poll ``GET /api/v1/result/<id>?wait=`` once (the echo
    backend finishes well within ``RESULT_WAIT``): the native path without streaming."""
    expected = body["prompt"]

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        request_id = await _submitted(connection, samples, body)
        if request_id is None:
            return
        response = await _long_poll(connection, request_id)
        answer = response.json()
        failure = _not_completed(response, answer)
        _check(samples, began, expected, failure, result=answer.get("result"))

    return operation


async def _long_poll(connection: Connection, request_id: str) -> Response:
    """``GET /api/v1/result/<id>?wait=``: the record once finished."""
    return await connection.request("GET", f"/api/v1/result/{request_id}?wait={RESULT_WAIT}")


def _not_completed(response: Response, answer: dict[str, Any]) -> str | None:
    status = answer.get("status")
    return None if status == "completed" else f"result: HTTP {response.status} {status}"


def submit_and_poll_each(
    bodies: Iterator[dict[str, Any]], by_cache_status: dict[str, list[float]]
) -> Operation:
    """Submit the next of ``bodies`` and long-poll its result (as ``submit_and_poll``),
    filing each correct answer's latency under the ``cache_status`` of its record,
    which the ``Cache-Status`` header must repeat (e.g. ``orchestrator; hit``)."""

    async def operation(connection: Connection, samples: Samples) -> None:
        body = next(bodies)
        began = time.perf_counter()
        request_id = await _submitted(connection, samples, body)
        if request_id is None:
            return
        response = await _long_poll(connection, request_id)
        answer = response.json()
        status = answer.get("cache_status") or "none"
        header = response.headers.get("cache-status", "")
        failure = _not_completed(response, answer)
        if failure is None and status in CACHE_OUTCOMES and not header.endswith(f"; {status}"):
            failure = f"Cache-Status {header!r} for cache_status {status}"
        if _check(samples, began, body["prompt"], failure, result=answer.get("result")):
            by_cache_status[status].append(samples.latencies[-1])

    return operation


def chat_body(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """A native ``/api/v1/infer`` body as a ``/v1/chat/completions`` one."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": body["prompt"]}],
        "stream": stream,
    }
    for option in ("max_tokens", "cache"):  # what the bench's bodies set
        if option in body:
            payload[option] = body[option]
    return payload


def chat_completion(body: dict[str, Any], model: str = "echo") -> Operation:
    """``POST /v1/chat/completions`` unstreamed: one ``chat.completion`` once finished."""
    expected, payload = body["prompt"], chat_body(body, model, stream=False)

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        response = await connection.request("POST", CHAT, payload)
        if response.status != 200:
            raise HTTPStatusError(response.status, response.body)
        content = response.json()["choices"][0]["message"]["content"]
        _check(samples, began, expected, None, content=content)

    return operation


def chat_stream(body: dict[str, Any], model: str = "echo") -> Operation:
    """``POST /v1/chat/completions`` streamed, read to ``data: [DONE]``."""
    expected, payload = body["prompt"], chat_body(body, model, stream=True)

    async def operation(connection: Connection, samples: Samples) -> None:
        began = time.perf_counter()
        stream = await read_chat_stream(connection, payload)
        _check(samples, began, expected, stream.failure, content=stream.text)

    return operation


@dataclass
class ChatStream:
    """A streamed chat completion as received: its content deltas joined, when the
    first arrived, and what was wrong with the stream (None: nothing)."""

    text: str = ""
    first_content: float | None = None  # time.perf_counter()
    failure: str | None = None


async def read_chat_stream(connection: Connection, payload: dict[str, Any]) -> ChatStream:
    """POST a streamed chat completion and read it to the end of the response
    (``HTTPStatusError`` if the answer is not a 200 stream)."""
    stream, chunks = ChatStream(), []
    async for _event, data in connection.events(CHAT, payload, "POST"):
        chunk = data if data == "[DONE]" else json.loads(data)
        chunks.append(chunk)
        for choice in chunk.get("choices", []) if isinstance(chunk, dict) else []:
            if content := choice["delta"].get("content"):
                stream.first_content = stream.first_content or time.perf_counter()
                stream.text += content
    stream.failure = _chat_failure(chunks)
    return stream


def _chat_failure(chunks: list[Any]) -> str | None:
    """What is wrong with a stream's chunks: an error, no role chunk first, no
    ``finish_reason``, not ending with ``[DONE]``; None if nothing."""
    errors = [c["error"].get("code") for c in chunks if isinstance(c, dict) and "error" in c]
    if errors:
        return f"stream error {errors[0]}"
    if chunks.count("[DONE]") != 1 or chunks[-1] != "[DONE]":
        return "stream not ended by one [DONE]"
    chunks = chunks[:-1]
    if not chunks or "role" not in chunks[0]["choices"][0]["delta"]:
        return "no role chunk first"
    if not any(c["choices"] and c["choices"][0].get("finish_reason") for c in chunks):
        return "no finish_reason"
    return None


async def first_token_sse(base_url: str, body: dict[str, Any], count: int) -> Samples:
    """Submit then stream, one at a time: seconds from submit to the first token."""
    samples = Samples()
    connection = Connection(base_url)
    try:
        for _ in range(count):
            began = time.perf_counter()
            request_id = await _submitted(connection, samples, body)
            if request_id is None:
                continue
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


async def first_token_chat(base_url: str, payload: dict[str, Any], count: int) -> Samples:
    """``/v1`` streamed, one at a time on one connection: from sending the POST to
    the first content delta (not the role chunk)."""
    samples = Samples()
    connection = Connection(base_url)
    try:
        for _ in range(count):
            began = time.perf_counter()
            stream = await read_chat_stream(connection, payload)
            if stream.failure is not None:
                samples.errors[stream.failure] += 1
            elif stream.first_content is not None:
                samples.latencies.append(stream.first_content - began)
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


# Seconds a keep-alive connection may sit idle before open_loop opens a new one
# instead (uvicorn closes idle ones after 5 s; a POST on a closing one would fail).
IDLE_REUSE = 2.0


@dataclass
class Sender:
    """One client of an open-loop load: Poisson arrivals at ``rate`` per second,
    each ``POST /api/v1/infer`` of a ``body()`` with API key ``key`` (none if empty);
    what came back."""

    rate: float
    body: Callable[[], dict[str, Any]]
    key: str
    offered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    without_retry_after: int = 0  # refusals (429/503) that did not say when to retry
    latencies: list[float] = field(default_factory=list)  # seconds, of the accepted

    @property
    def accepted(self) -> int:
        return self.statuses[202]

    @property
    def refused(self) -> int:
        return self.statuses[429] + self.statuses[503]

    def problems(self) -> list[str]:
        """Answers other than accepted (202) or refused with Retry-After, and errors."""
        bad = {s: n for s, n in self.statuses.items() if s not in (202, 429, 503)}
        found = [f"{n} x HTTP {s}" for s, n in sorted(bad.items())]
        if self.without_retry_after:
            found.append(f"{self.without_retry_after} refusals without Retry-After")
        return found + [f"{n} x {error}" for error, n in self.errors.most_common()]


async def open_loop(urls: list[str], senders: list[Sender], seconds: float, seed: int = 1) -> None:
    """Every sender's arrivals at once for ``seconds`` (each sender's first at 0):
    open loop, a slow answer never delays the next arrival. Each request takes a
    recently used keep-alive connection to its web process, or opens one."""
    idle: dict[str, list[tuple[Connection, float]]] = {url: [] for url in urls}
    rng = random.Random(seed)
    began = time.perf_counter()

    async def connect(url: str) -> Connection:
        while idle[url]:
            connection, since = idle[url].pop()
            if time.perf_counter() - since < IDLE_REUSE:
                return connection
            await connection.close()
        return Connection(url)

    async def send(sender: Sender, url: str, body: dict[str, Any]) -> None:
        began = time.perf_counter()
        connection = await connect(url)
        headers = {"Authorization": f"Bearer {sender.key}"} if sender.key else {}
        try:
            response = await connection.request("POST", INFER, body, headers)
        except (OSError, asyncio.IncompleteReadError) as exc:
            sender.errors[type(exc).__name__] += 1
            await connection.close()
            return
        idle[url].append((connection, time.perf_counter()))
        sender.statuses[response.status] += 1
        if response.status == 202:
            sender.latencies.append(time.perf_counter() - began)
        if response.status in (429, 503) and "retry-after" not in response.headers:
            sender.without_retry_after += 1

    async def arrivals(sender: Sender) -> None:
        sent, at = [], began
        while at < began + seconds:
            await asyncio.sleep(max(at - time.perf_counter(), 0))
            url = urls[sender.offered % len(urls)]
            sent.append(asyncio.create_task(send(sender, url, sender.body())))
            sender.offered += 1
            at += rng.expovariate(sender.rate)
        await asyncio.sleep(max(began + seconds - time.perf_counter(), 0))  # the whole time
        await asyncio.gather(*sent)

    await asyncio.gather(*(arrivals(sender) for sender in senders))
    for connections in idle.values():
        for connection, _ in connections:
            await connection.close()
