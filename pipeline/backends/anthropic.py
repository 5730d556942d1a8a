"""Anthropic's Messages API with streaming events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from pipeline.backends.base import Backend, BackendError, GenerationParams, Usage
from pipeline.backends.http import (
    HttpClients,
    iter_sse,
    parse_json,
    raise_for_status,
    transport_error,
)

API_VERSION = "2023-06-01"


class AnthropicBackend(Backend):
    def __init__(
        self,
        *,
        name: str,
        base_url: str = "https://api.anthropic.com",
        api_key: str = "",
        model: str = "claude-3-5-haiku-latest",
        headers: dict[str, str] | None = None,
        connect_timeout: float = 5.0,
        first_token_timeout: float = 30.0,
        total_timeout: float = 300.0,
    ) -> None:
        super().__init__(name=name)
        self.url = base_url.rstrip("/") + "/v1/messages"
        self.model = model
        self.first_token_timeout = first_token_timeout
        self.total_timeout = total_timeout
        self.clients = HttpClients(
            headers={"x-api-key": api_key, "anthropic-version": API_VERSION, **(headers or {})},
            timeout=httpx.Timeout(total_timeout, connect=connect_timeout),
        )

    def body(self, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m for m in messages if m["role"] != "system"],
            "max_tokens": params.max_tokens,
            "temperature": min(params.temperature, 1.0),  # Anthropic's range is 0-1
            "top_p": params.top_p,
            "stream": True,
        }
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = params.stop
        return body

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, usage: Usage
    ) -> AsyncIterator[str]:
        client = self.clients.get()
        try:
            async with asyncio.timeout(self.total_timeout):
                async with client.stream(
                    "POST", self.url, json=self.body(messages, params)
                ) as response:
                    await raise_for_status(response, self.name)
                    async for delta in self._deltas(response, usage):
                        yield delta
        except (httpx.TransportError, TimeoutError) as exc:
            raise transport_error(exc, self.name) from exc

    async def _deltas(self, response: httpx.Response, usage: Usage) -> AsyncIterator[str]:
        events = iter_sse(response)
        first = True
        while True:
            async with asyncio.timeout(self.first_token_timeout if first else None):
                item = await anext(events, None)
            if item is None:
                return
            first = False
            event, data = item
            payload = parse_json(data)
            kind = payload.get("type", event)
            if kind == "message_start":
                start_usage = (payload.get("message") or {}).get("usage") or {}
                usage.prompt_tokens = start_usage.get("input_tokens", 0)
            elif kind == "content_block_delta":
                text = (payload.get("delta") or {}).get("text")
                if text:
                    yield text
            elif kind == "message_delta":
                usage.finish_reason = (payload.get("delta") or {}).get("stop_reason") or ""
                usage.completion_tokens = (payload.get("usage") or {}).get("output_tokens", 0)
            elif kind == "message_stop":
                return
            elif kind == "error":
                error = payload.get("error") or {}
                retryable = error.get("type") in ("overloaded_error", "api_error")
                raise BackendError(
                    f"{self.name}: {error.get('message', 'stream error')}",
                    code=error.get("type", "upstream_error"),
                    retryable=retryable,
                )
