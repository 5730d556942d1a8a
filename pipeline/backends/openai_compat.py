"""OpenAI-compatible Chat Completions with streaming (OpenAI, vLLM, llama.cpp
server, Ollama's /v1, LiteLLM, ...)."""

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


class OpenAICompatBackend(Backend):
    def __init__(
        self,
        *,
        name: str,
        base_url: str = "https://api.openai.com/v1",
        api_key: str = "",
        model: str = "gpt-4o-mini",
        headers: dict[str, str] | None = None,
        connect_timeout: float = 5.0,
        first_token_timeout: float = 30.0,
        total_timeout: float = 300.0,
    ) -> None:
        super().__init__(name=name)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.first_token_timeout = first_token_timeout
        self.total_timeout = total_timeout
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.clients = HttpClients(
            headers={**auth, **(headers or {})},
            timeout=httpx.Timeout(total_timeout, connect=connect_timeout),
        )

    def body(self, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
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
            # Until the first event, a stalled upstream gets first_token_timeout.
            timeout = self.first_token_timeout if first else None
            async with asyncio.timeout(timeout):
                item = await anext(events, None)
            if item is None:
                return  # the stream ended without [DONE]; keep what we have
            _, data = item
            if data.strip() == "[DONE]":
                return
            first = False
            chunk = parse_json(data)
            if "error" in chunk:
                error = (
                    chunk["error"]
                    if isinstance(chunk["error"], dict)
                    else {"message": chunk["error"]}
                )
                raise BackendError(
                    f"{self.name}: {error.get('message', error)}", code="upstream_error"
                )
            self._account(chunk, usage)
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    usage.completion_tokens += 1  # estimate; the usage chunk corrects it
                    yield content

    @staticmethod
    def _account(chunk: dict[str, Any], usage: Usage) -> None:
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                usage.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):  # the final usage chunk is authoritative
            usage.prompt_tokens = chunk["usage"].get("prompt_tokens", usage.prompt_tokens)
            usage.completion_tokens = chunk["usage"].get(
                "completion_tokens", usage.completion_tokens
            )
