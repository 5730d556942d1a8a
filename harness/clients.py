"""Real network clients for the service suite: httpx for SSE, websockets for WS."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
import websockets


@dataclass
class Received:
    """What one client reassembled from a stream."""

    text: str = ""
    seqs: list[int] = field(default_factory=list)
    final: dict | None = None
    last_id: str | None = None
    resets: int = 0

    def reset(self) -> None:
        """A new attempt started: what we had belongs to a dead one."""
        self.text, self.seqs, self.resets = "", [], self.resets + 1


async def sse_read(
    client: httpx.AsyncClient, request_id: str, into: Received, stop_after: int | None = None
) -> Received:
    """Read the stream (from ``into.last_id``); stop early after ``stop_after`` tokens."""
    headers = {"Last-Event-ID": into.last_id} if into.last_id else {}
    async with client.stream("GET", f"/api/v1/stream/{request_id}", headers=headers) as response:
        if response.status_code != 200:  # e.g. a 503 while the database restarts
            await response.aread()
            message = f"stream answered {response.status_code}: {response.text}"
            raise httpx.HTTPStatusError(message, request=response.request, response=response)
        event, event_id = "", None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "token":
                    into.text += data["data"]
                    into.seqs.append(data["chunk"])
                    into.last_id = event_id
                    if stop_after is not None and len(into.seqs) >= stop_after:
                        return into  # drop the connection mid-stream
                elif event == "reset":
                    into.reset()
                elif event in ("complete", "error"):
                    into.final = {"event": event, **data}
                    return into
    return into


async def chat_read(
    client: httpx.AsyncClient, body: dict, headers: dict[str, str], into: Received
) -> str:
    """POST a streamed ``/v1`` chat completion, its deltas into ``into``; returns
    the request id. ``into.final``: ``complete`` on ``[DONE]``, ``error`` on an
    error chunk, None if the connection ended first."""
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            message = f"/v1 answered {response.status_code}: {response.text}"
            raise httpx.HTTPStatusError(message, request=response.request, response=response)
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                into.final = {"event": "complete"}
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    into.final = {"event": "error", **chunk}
                for choice in chunk.get("choices", []):
                    into.text += choice["delta"].get("content") or ""
        return response.headers["x-orchestrator-request-id"]


async def ws_run(
    ws_url: str,
    origin: str,
    prompt: str,
    drop_after: int | None = None,
    extra: dict | None = None,
) -> Received:
    """Submit over a WebSocket (``extra``: more fields of the submit, e.g. a
    temperature); optionally drop it mid-stream and resume on a new one."""
    received = Received()
    async with websockets.connect(ws_url, origin=origin) as socket:
        await socket.send(json.dumps({"prompt": prompt, **(extra or {})}))
        ack = json.loads(await socket.recv())
        request_id = ack["request_id"]
        if await _ws_collect(socket, request_id, received, drop_after):
            return received
    async with websockets.connect(ws_url, origin=origin) as socket:
        last = received.seqs[-1] if received.seqs else -1
        await socket.send(
            json.dumps({"type": "resume", "request_id": request_id, "last_chunk": last})
        )
        await _ws_collect(socket, request_id, received, None)
    return received


async def _ws_collect(socket, request_id: str, into: Received, drop_after: int | None) -> bool:  # type: ignore[no-untyped-def]
    """True once the request's final message arrived; False if we dropped first."""
    while True:
        message = json.loads(await socket.recv())
        if message.get("request_id") != request_id:
            continue
        if message["type"] == "token":
            into.text += message["data"]
            into.seqs.append(message["chunk"])
            if drop_after is not None and len(into.seqs) >= drop_after:
                return False
        elif message["type"] == "reset":
            into.reset()
        elif message["type"] in ("result", "error"):
            into.final = message
            return True
