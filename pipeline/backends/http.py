"""What the HTTP backends share: a client per event loop, SSE parsing, errors."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx

from pipeline.backends.base import Backend, BackendError, GenerationParams, Usage


class HttpClients:
    """One ``httpx.AsyncClient`` per event loop (a client is bound to its loop),
    so connections (and TLS sessions) are reused across requests."""

    def __init__(self, **client_options: Any) -> None:
        self.client_options = client_options
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(**self.client_options)
        return client


async def iter_sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream body; multi-line data joined."""
    event, data = "", list[str]()
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", list[str]()
        elif line.startswith(":"):
            continue  # comment / keepalive
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event or "message", "\n".join(data)


def parse_json(data: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError:
        raise BackendError(
            "upstream sent invalid JSON", code="bad_upstream_response", detail=data[:200]
        ) from None
    if not isinstance(parsed, dict):
        raise BackendError("upstream sent a non-object event", code="bad_upstream_response")
    return parsed


def retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


async def raise_for_status(response: httpx.Response, backend: str) -> None:
    """Map an upstream error status to a BackendError (429 and 5xx are retryable)."""
    if response.status_code < 400:
        return
    body = (await response.aread())[:500].decode(errors="replace")
    retryable = response.status_code == 429 or response.status_code >= 500
    code = (
        "rate_limited" if response.status_code == 429 else f"upstream_http_{response.status_code}"
    )
    raise BackendError(
        f"{backend} answered HTTP {response.status_code}.",
        code=code,
        retryable=retryable,
        retry_after=retry_after_seconds(response),
        detail=body,
    )


def transport_error(exc: Exception, backend: str) -> BackendError:
    """Connect errors and timeouts are worth retrying."""
    kind = "timeout" if isinstance(exc, httpx.TimeoutException | TimeoutError) else "connect_error"
    message = f"{backend}: {type(exc).__name__}"
    return BackendError(message, code=kind, retryable=True, detail=str(exc))


class StreamingHttpBackend(Backend):
    """A backend that POSTs JSON and reads the answer as Server-Sent Events.

    Subclasses say what to send (``body``) and what each event means
    (``on_event``); timeouts, status mapping and transport errors live here.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        headers: dict[str, str],
        connect_timeout: float,
        first_token_timeout: float,
        total_timeout: float,
    ) -> None:
        super().__init__(name=name)
        self.url = url
        self.first_token_timeout = first_token_timeout
        self.total_timeout = total_timeout
        self.clients = HttpClients(
            headers=headers, timeout=httpx.Timeout(total_timeout, connect=connect_timeout)
        )

    def body(self, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
        raise NotImplementedError

    def on_event(self, event: str, data: str, usage: Usage) -> list[str] | None:
        """The text deltas an event carries; None when the stream is complete."""
        raise NotImplementedError

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        client = self.clients.get()
        try:
            async with asyncio.timeout(self.total_timeout):
                body = self.body(messages, params)
                async with client.stream("POST", self.url, json=body) as response:
                    await raise_for_status(response, self.name)
                    async for delta in self._deltas(response, usage):
                        yield delta
        except (httpx.TransportError, TimeoutError) as exc:
            raise transport_error(exc, self.name) from exc

    async def _deltas(self, response: httpx.Response, usage: Usage) -> AsyncIterator[str]:
        events = iter_sse(response)
        # Until the first event arrives, a stalled upstream gets first_token_timeout.
        wait: float | None = self.first_token_timeout
        while True:
            async with asyncio.timeout(wait):
                item = await anext(events, None)
            wait = None
            if item is None:
                return  # ended without its end marker: keep what we have
            deltas = self.on_event(*item, usage)
            if deltas is None:
                return
            for delta in deltas:
                yield delta
