"""A loopback HTTP server speaking the OpenAI and Anthropic streaming wire formats.

The scenario comes from the request's ``model`` field, so one server plays many
upstreams: "ok", "429-once" (429 with retry-after, then ok), "500", "500-once",
"stall-first" (headers, then silence), "stall-mid" (two tokens, then silence),
"error-mid" (two tokens, then an in-stream error), "slow" (a token every 50 ms),
"no-usage" (an OpenAI-compatible server that ignores ``stream_options``).
It answers by echoing the last user message word by word, and records every
request and every client disconnect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

WORD_DELAY = {"slow": 0.05}


@dataclass
class FakeLLMServer:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected_at: float = 0.0

    async def start(self) -> FakeLLMServer:
        self.server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path, headers, body = await _read_request(reader)
            request = {"path": path, "headers": headers, "body": json.loads(body or b"{}")}
            self.requests.append(request)
            scenario = request["body"].get("model", "ok")
            self.calls[scenario] += 1
            flavour = "anthropic" if path.endswith("/v1/messages") else "openai"
            await self._respond(writer, scenario, flavour, request["body"])
            # Hold the connection like a slow upstream, until the client leaves.
            await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.disconnected_at = time.monotonic()
            self.disconnected.set()
            writer.close()

    async def _respond(self, writer, scenario: str, flavour: str, body: dict) -> None:  # type: ignore[no-untyped-def]
        if scenario == "500" or (scenario == "500-once" and self.calls[scenario] == 1):
            return await _plain(writer, 500, {"error": {"message": "boom", "type": "server_error"}})
        if scenario == "401":  # with account details a caller must never see
            message = "Incorrect API key for organization org-SECRET123, project proj_456."
            return await _plain(writer, 401, {"error": {"message": message}})
        if scenario == "429-once" and self.calls[scenario] == 1:
            return await _plain(
                writer, 429, {"error": {"message": "slow down"}}, {"retry-after": "0.1"}
            )
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"connection: close\r\n\r\n"
        )
        await writer.drain()
        if scenario == "stall-first":
            return
        words = _words(body)
        events = OPENAI if flavour == "openai" else ANTHROPIC
        for frame in events.start(body):
            await _send(writer, frame)
        for i, word in enumerate(words[: body.get("max_tokens", 10**6)]):
            if scenario in ("stall-mid", "error-mid") and i == 2:
                if scenario == "error-mid":
                    await _send(writer, events.error())
                return
            await asyncio.sleep(WORD_DELAY.get(scenario, 0))
            await _send(writer, events.delta(body, word))
        for frame in events.end(body, len(words)):
            if scenario != "no-usage" or '"usage"' not in frame:
                await _send(writer, frame)


def _words(body: dict) -> list[str]:
    prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    words = prompt.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class OPENAI:
    @staticmethod
    def _chunk(body: dict, delta: dict, finish: str | None = None) -> str:
        return (
            "data: "
            + json.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )
            + "\n\n"
        )

    @classmethod
    def start(cls, body: dict) -> list[str]:
        return [cls._chunk(body, {"role": "assistant", "content": ""})]

    @classmethod
    def delta(cls, body: dict, word: str) -> str:
        return cls._chunk(body, {"content": word})

    @classmethod
    def end(cls, body: dict, count: int) -> list[str]:
        usage = {"prompt_tokens": 11, "completion_tokens": count, "total_tokens": 11 + count}
        return [
            cls._chunk(body, {}, "stop"),
            "data: "
            + json.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": usage,
                }
            )
            + "\n\n",
            "data: [DONE]\n\n",
        ]

    @staticmethod
    def error() -> str:
        return 'data: {"error": {"message": "model overloaded", "type": "server_error"}}\n\n'


class ANTHROPIC:
    @staticmethod
    def _event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    @classmethod
    def start(cls, body: dict) -> list[str]:
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body.get("model"),
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 13, "output_tokens": 1},
        }
        return [
            cls._event("message_start", {"message": message}),
            cls._event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            cls._event("ping", {}),
        ]

    @classmethod
    def delta(cls, body: dict, word: str) -> str:
        return cls._event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}}
        )

    @classmethod
    def end(cls, body: dict, count: int) -> list[str]:
        return [
            cls._event("content_block_stop", {"index": 0}),
            cls._event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": count},
                },
            ),
            cls._event("message_stop", {}),
        ]

    @classmethod
    def error(cls) -> str:
        return cls._event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return path, headers, body


async def _send(writer: asyncio.StreamWriter, frame: str) -> None:
    writer.write(frame.encode())
    await writer.drain()


async def _plain(writer, status: int, body: dict, headers: dict | None = None) -> None:  # type: ignore[no-untyped-def]
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        f"{extra}connection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
