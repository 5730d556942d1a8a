"""OpenAI-compatible Chat Completions with streaming (OpenAI, vLLM, llama.cpp
server, Ollama's /v1, LiteLLM, ...)."""

from __future__ import annotations

from typing import Any

from inference.models import PRIORITY_NORMAL
from pipeline.backends.base import BackendError, GenerationParams, Usage
from pipeline.backends.http import StreamingHttpBackend, parse_json


class OpenAICompatBackend(StreamingHttpBackend):
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
        forward_priority: bool = False,
    ) -> None:
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(
            name=name,
            url=base_url.rstrip("/") + "/chat/completions",
            headers={**auth, **(headers or {})},
            connect_timeout=connect_timeout,
            first_token_timeout=first_token_timeout,
            total_timeout=total_timeout,
        )
        self.model = model
        # vLLM (started with --scheduling-policy priority) orders by a body
        # "priority", lower sooner: ours, in its polarity.
        self.forward_priority = forward_priority

    def body(self, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": params.model or self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if self.forward_priority:
            body["priority"] = PRIORITY_NORMAL - params.priority
        return body

    def on_event(self, event: str, data: str, usage: Usage) -> list[str] | None:
        if data.strip() == "[DONE]":
            return None
        chunk = parse_json(data)
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise BackendError(
                f"{self.name}: the upstream reported an error.",
                code="upstream_error",
                detail=str(message),
            )
        deltas = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                usage.finish_reason = choice["finish_reason"]
            content = (choice.get("delta") or {}).get("content")
            if content:
                usage.completion_tokens += 1  # an estimate; the usage chunk corrects it
                usage.estimated = True
                deltas.append(content)
        if chunk.get("usage"):  # the final usage chunk is authoritative
            usage.estimated = False
            usage.prompt_tokens = chunk["usage"].get("prompt_tokens", usage.prompt_tokens)
            usage.completion_tokens = chunk["usage"].get(
                "completion_tokens", usage.completion_tokens
            )
        return deltas
