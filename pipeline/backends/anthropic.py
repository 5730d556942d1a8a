"""Anthropic's Messages API with streaming events."""

from __future__ import annotations

from typing import Any

from pipeline.backends.base import BackendError, GenerationParams, Usage
from pipeline.backends.http import StreamingHttpBackend, parse_json

API_VERSION = "2023-06-01"
RETRYABLE_ERRORS = ("overloaded_error", "api_error")


# Anthropic's stop reasons in OpenAI's words (what /v1 clients and the row expect).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicBackend(StreamingHttpBackend):
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
        super().__init__(
            name=name,
            url=base_url.rstrip("/") + "/v1/messages",
            headers={"x-api-key": api_key, "anthropic-version": API_VERSION, **(headers or {})},
            connect_timeout=connect_timeout,
            first_token_timeout=first_token_timeout,
            total_timeout=total_timeout,
        )
        self.model = model

    def body(self, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": params.model or self.model,  # (Anthropic has no seed)
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

    def on_event(self, event: str, data: str, usage: Usage) -> list[str] | None:
        payload = parse_json(data)
        kind = payload.get("type", event)
        if kind == "message_start":
            start_usage = (payload.get("message") or {}).get("usage") or {}
            usage.prompt_tokens = start_usage.get("input_tokens", 0)
        elif kind == "content_block_delta":
            text = (payload.get("delta") or {}).get("text")
            if text:  # about a token each, until message_delta counts them
                usage.completion_tokens += 1
                usage.estimated = True
            return [text] if text else []
        elif kind == "message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason") or ""
            usage.finish_reason = FINISH_REASONS.get(reason, reason)
            output_tokens = (payload.get("usage") or {}).get("output_tokens")
            if output_tokens is not None:
                usage.completion_tokens, usage.estimated = output_tokens, False
        elif kind == "message_stop":
            return None
        elif kind == "error":
            error = payload.get("error") or {}
            raise BackendError(
                f"{self.name}: the upstream reported an error.",
                code=error.get("type", "upstream_error"),
                retryable=error.get("type") in RETRYABLE_ERRORS,
                detail=str(error.get("message", "")),
            )
        return []
