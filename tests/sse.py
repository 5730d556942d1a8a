"""A tiny SSE (and HTTP) client over Channels' ApplicationCommunicator (no network)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from channels.routing import URLRouter
from channels.testing import ApplicationCommunicator

from inference.routing import http_urlpatterns


@dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str | None = None


@dataclass
class SSEClient:
    path: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    method: str = "GET"
    body: bytes = b""
    status: int = 0
    response_headers: dict[bytes, bytes] = field(default_factory=dict)
    raw: str = ""
    finished: bool = False

    async def open(self, timeout: float = 5) -> SSEClient:
        path, _, query = self.path.partition("?")
        scope = {
            "type": "http",
            "method": self.method,
            "path": path,
            "query_string": query.encode(),
            "headers": self.headers,
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        self.communicator = ApplicationCommunicator(URLRouter(http_urlpatterns), scope)
        await self.communicator.send_input(
            {"type": "http.request", "body": self.body, "more_body": False}
        )
        start = await self.communicator.receive_output(timeout)
        self.status = start["status"]
        self.response_headers = dict(start["headers"])
        return self

    async def read_chunk(self, timeout: float = 5) -> str:
        message = await self.communicator.receive_output(timeout)
        text = message.get("body", b"").decode()
        self.raw += text
        self.finished = not message.get("more_body", False)
        return text

    async def events(self, timeout: float = 10) -> list[Event]:
        """Read until the server ends the response; parse every event."""
        while not self.finished:
            await self.read_chunk(timeout)
        return parse(self.raw)

    async def read_until(self, predicate, timeout: float = 10) -> list[Event]:  # type: ignore[no-untyped-def]
        """Read until ``predicate(events so far)`` holds."""
        while not predicate(parse(self.raw)):
            assert not self.finished, "stream ended first"
            await self.read_chunk(timeout)
        return parse(self.raw)

    async def disconnect(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(timeout=5)


def parse(raw: str) -> list[Event]:
    events = []
    for block in raw.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("event", "data", "id"):
                fields[name] = value
        if "event" in fields:
            events.append(Event(fields["event"], json.loads(fields["data"]), fields.get("id")))
    return events


def text_of(events: list[Event]) -> str:
    return "".join(e.data["data"] for e in events if e.event == "token")


def seqs_of(events: list[Event]) -> list[int]:
    return [e.data["chunk"] for e in events if e.event == "token"]
