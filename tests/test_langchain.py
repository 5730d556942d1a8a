"""LangChain's ``ChatOpenAI`` against ``/v1`` (an optional extra: CI installs
``requirements-extras.txt``; without it these tests are skipped, saying so)."""

from __future__ import annotations

import uuid

import pytest

from tests.test_openai_sdk import PROMPT, Server, server, upstream  # noqa: F401 (fixtures)

langchain_openai = pytest.importorskip(
    "langchain_openai", reason="optional extra: pip install -r requirements-extras.txt"
)


def chat_model(server: Server, **options: object):  # type: ignore[no-untyped-def]  # noqa: F811
    return langchain_openai.ChatOpenAI(
        base_url=f"{server.url}/v1", api_key=server.key, model="echo", **options
    )


def test_invoke_returns_the_text_and_usage(server: Server) -> None:  # noqa: F811
    message = chat_model(server).invoke(PROMPT)
    assert message.content == PROMPT
    assert message.usage_metadata["output_tokens"] == 9
    assert message.response_metadata["finish_reason"] == "stop"


def test_stream_returns_the_text_and_usage_when_asked(server: Server) -> None:  # noqa: F811
    chunks = list(chat_model(server, stream_usage=True).stream(PROMPT))
    assert "".join(chunk.content for chunk in chunks) == PROMPT
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 9


def test_extensions_travel_in_extra_body(server: Server) -> None:  # noqa: F811
    model = chat_model(server, extra_body={"priority": -4, "session_id": "lc-1"})
    message = model.invoke(PROMPT)
    request_id = str(uuid.UUID(message.response_metadata["id"].removeprefix("chatcmpl-")))
    row = server.status(request_id)
    assert (row["priority"], row["session_id"]) == (9, "lc-1")  # vLLM's -4: our highest
