"""A lean HTTP/1.1 keep-alive client on raw asyncio streams, for load generation.

httpx costs a few hundred microseconds of CPU per request; on a 2-core box the
load generator shares the CPU with the servers it measures, so the bench speaks
just enough HTTP/1.1 itself: keep-alive, Content-Length and chunked bodies,
and Server-Sent Events read incrementally (the first token's arrival time is a
measurement).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection to ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        """Send one request and read the whole response (reopening if the server
        closed the idle connection)."""
        if self.writer is None:
            await self.open()
        await self._send(method, path, payload, headers)
        status, response_headers = await self._read_head()
        body = b"".join([part async for part in self._body(response_headers)])
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, response_headers, body)

    async def events(
        self, path: str, payload: Any = None, method: str = "GET"
    ) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(event, data)`` of a Server-Sent Events response as each arrives.

        A non-200 answer raises ``HTTPStatusError``. A consumer that stops early
        must ``close()`` the connection (the rest of the stream is unread).
        """
        if self.writer is None:
            await self.open()
        await self._send(method, path, payload, None)
        status, headers = await self._read_head()
        if status != 200:
            body = b"".join([part async for part in self._body(headers)])
            raise HTTPStatusError(status, body)
        buffer = b""
        async for part in self._body(headers):
            buffer += part
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                event = parse_event(block)
                if event is not None:
                    yield event
        if headers.get("connection", "").lower() == "close" or not _framed(headers):
            await self.close()

    async def _send(
        self, method: str, path: str, payload: Any, headers: dict[str, str] | None
    ) -> None:
        assert self.writer is not None
        body = b"" if payload is None else json.dumps(payload).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if payload is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ", 2)[1]), headers

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives: Content-Length, chunked, or up to EOF."""
        assert self.reader is not None
        if "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return
                yield await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        else:
            while chunk := await self.reader.read(65536):
                yield chunk


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


def _framed(headers: dict[str, str]) -> bool:
    return "content-length" in headers or "transfer-encoding" in headers


def parse_event(block: bytes) -> tuple[str, str] | None:
    """One SSE block -> ``(event, data)``; comments and keepalives -> None."""
    event, data = "message", []
    for line in block.decode().splitlines():
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return (event, "\n".join(data)) if data else None
