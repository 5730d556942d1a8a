"""What the HTTP backends share: a client per event loop, SSE parsing, errors."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx

from pipeline.backends.base import BackendError


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
            f"upstream sent invalid JSON: {data[:200]!r}", code="bad_upstream_response"
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
        f"{backend} answered {response.status_code}: {body}",
        code=code,
        retryable=retryable,
        retry_after=retry_after_seconds(response),
    )


def transport_error(exc: Exception, backend: str) -> BackendError:
    """Connect errors and timeouts are worth retrying."""
    kind = "timeout" if isinstance(exc, httpx.TimeoutException | TimeoutError) else "connect_error"
    return BackendError(f"{backend}: {type(exc).__name__}: {exc}", code=kind, retryable=True)
