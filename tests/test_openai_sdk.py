"""The OpenAI-compatible ``/v1`` API driven by the official ``openai`` SDK (sync
and async) against a real ``manage.py serve`` process with keys required; the
``upstream`` backend is a loopback fake OpenAI server, so a model name picks an
upstream scenario (``upstream/error-mid``, ``upstream/slow``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.fake_llm_server import FakeLLMServer
from harness.processes import create_api_key, embedded_env, serving

GOLDEN = Path(__file__).parent / "fixtures" / "openai_stream.golden"
GRACE = 0.5  # seconds a dropped stream keeps generating, waiting for a reader


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLLMServer]:
    """The fake upstream on its own event loop (the SDK tests are synchronous)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fake = asyncio.run_coroutine_threadsafe(FakeLLMServer().start(), loop).result()
    yield fake
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)


class Server:
    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url, self.env = url, env
        self.key = create_api_key(env)

    def client(self, key: str | None = None, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, **options)  # type: ignore[arg-type]

    def status(self, request_id: str) -> dict:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.get(f"{self.url}/api/v1/status/{request_id}", headers=headers).json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeLLMServer) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("openai")
    backends = {
        "echo": {"class": "pipeline.backends.echo.EchoBackend", "options": {}},
        "slow-echo": {
            "class": "pipeline.backends.echo.EchoBackend",
            "options": {"token_delay": 0.05},
        },
        "upstream": {
            "class": "pipeline.backends.openai_compat.OpenAICompatBackend",
            "options": {"base_url": f"{upstream.url}/v1", "api_key": "sk-fake", "model": "ok"},
            "models": ["*"],
        },
    }
    env = embedded_env(
        data_dir,
        ORCHESTRATOR_AUTH_REQUIRED="true",
        ORCHESTRATOR_BACKENDS=json.dumps(backends),
        ORCHESTRATOR_MAX_STREAMS="1",
        ORCHESTRATOR_REQUESTS_PER_MINUTE="0",
        ORCHESTRATOR_MAX_IN_FLIGHT="0",
        ORCHESTRATOR_BACKEND_RETRIES="0",
        ORCHESTRATOR_OPENAI_DISCONNECT_GRACE_SECONDS=str(GRACE),
        ORCHESTRATOR_CHUNK_BATCH_TOKENS="1",
    )
    with serving(env, data_dir / "server.log") as url:
        yield Server(url, env)


PROMPT = "The quick brown fox jumps over the lazy dog"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": PROMPT},
]


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# --- answers ----------------------------------------------------------------------


def test_a_completion_has_the_text_usage_and_request_ids(server: Server) -> None:
    raw = server.client().chat.completions.with_raw_response.create(model="echo", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == PROMPT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 9
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 9
    assert completion._request_id == raw.headers["x-request-id"]
    request_id = raw.headers["x-orchestrator-request-id"]
    assert completion.id == "chatcmpl-" + request_id.replace("-", "")
    assert completion.model_extra["orchestrator"]["request_id"] == request_id
    row = server.status(request_id)
    assert row["status"] == "completed" and row["backend"] == "echo"


def test_a_cut_answer_says_length(server: Server) -> None:
    completion = server.client().chat.completions.create(
        model="echo", messages=MESSAGES, max_completion_tokens=3
    )
    assert completion.choices[0].message.content == "The quick brown"
    assert completion.choices[0].finish_reason == "length"


async def test_the_async_client_creates_and_streams(server: Server) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.key)
    completion = await client.chat.completions.create(model="echo", messages=MESSAGES)
    assert completion.choices[0].message.content == PROMPT
    stream = await client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == PROMPT
    await client.close()


def stream_text(chunks: Iterator) -> tuple[str, list]:  # type: ignore[type-arg]
    seen = list(chunks)
    return "".join(c.choices[0].delta.content or "" for c in seen if c.choices), seen


def test_a_stream_without_include_usage_has_no_usage_chunk(server: Server) -> None:
    stream = server.client().chat.completions.create(model="echo", messages=MESSAGES, stream=True)
    text, chunks = stream_text(stream)
    assert text == PROMPT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_a_stream_with_include_usage_ends_with_the_usage_chunk(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model="echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = stream_text(stream)
    assert text == PROMPT
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])


def normalised(raw: bytes) -> str:
    """The stream with what changes per request (ids, times) replaced."""
    text = raw.decode()
    text = re.sub(r"chatcmpl-[0-9a-f]{32}", "chatcmpl-ID", text)
    text = re.sub(r'"created":\d+', '"created":0', text)
    return re.sub(r'"request_id":"[0-9a-f-]{36}"', '"request_id":"ID"', text)


def test_the_raw_stream_matches_the_golden_file(server: Server) -> None:
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {server.key}"}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        raw = r.read()
    assert not re.search(rb"^(id|event|retry):", raw, re.MULTILINE)
    assert raw.endswith(b"data: [DONE]\n\n")
    if os.environ.get("UPDATE_GOLDEN"):  # after a deliberate change of the format
        GOLDEN.write_text(normalised(raw))
    assert normalised(raw) == GOLDEN.read_text()


# --- errors -----------------------------------------------------------------------


def test_a_bad_key_is_an_authentication_error(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        server.client("nope.nope", max_retries=0).models.list()
    assert raised.value.code == "invalid_api_key"


def test_an_unknown_model_is_not_found_with_model_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        server.client().chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert raised.value.code == "model_not_found"
    assert raised.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("fields", "param", "wording"),
    [
        ({"n": 2}, "n", "n=1"),
        ({"logprobs": True}, "logprobs", "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "Tools"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "'response_format' of type 'json_schema' is not supported with this model",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream is true"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0",
            "text",
        ),
    ],
)
def test_what_cannot_be_honoured_is_a_bad_request_naming_the_param(
    server: Server, fields: dict, param: str, wording: str
) -> None:
    request = {"model": "echo", "messages": MESSAGES, **fields}
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().chat.completions.create(**request)
    assert raised.value.param == param
    assert wording in raised.value.message


def test_unknown_fields_are_ignored_and_named(server: Server) -> None:
    raw = server.client().chat.completions.with_raw_response.create(
        model="echo",
        messages=MESSAGES,
        frequency_penalty=0.5,
        extra_body={"frobnicate": True},
    )
    assert raw.parse().choices[0].message.content == PROMPT
    assert raw.headers["x-orchestrator-ignored-params"] == "frequency_penalty, frobnicate"


def test_an_idempotency_key_replays_the_same_request_and_refuses_another(server: Server) -> None:
    client = server.client()
    key = {"Idempotency-Key": "chat-order-1"}
    first = client.chat.completions.create(model="echo", messages=MESSAGES, extra_headers=key)
    again = client.chat.completions.create(model="echo", messages=MESSAGES, extra_headers=key)
    assert again.id == first.id
    other = [{"role": "user", "content": "something else"}]
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model="echo", messages=other, extra_headers=key)
    assert raised.value.code == "idempotency_key_reused"


def test_other_openai_routes_are_404_in_the_envelope(server: Server) -> None:
    with pytest.raises(openai.NotFoundError):
        server.client(max_retries=0).embeddings.create(model="echo", input="x")


def refusals_seen(server: Server) -> float:
    """The server's own count of 429s on the chat route (its /metrics)."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "orchestrator_http_requests_total"
        and sample.labels.get("route") == "/v1/chat/completions"
        and sample.labels.get("status") == "429"
    )


def test_the_sdk_retries_a_429_and_then_raises(server: Server) -> None:
    """One stream per key (MAX_STREAMS=1): a second is a 429 with Retry-After 1,
    which the SDK retries twice, honouring retry-after-ms."""
    key = create_api_key(server.env)
    sent: list[str] = []
    http = httpx.Client(
        event_hooks={"request": [lambda r: sent.append(r.headers["x-stainless-retry-count"])]}
    )
    client = server.client(key, http_client=http)
    held = client.chat.completions.create(
        model="slow-echo", messages=[{"role": "user", "content": words(100)}], stream=True
    )
    next(iter(held))
    refused_before = refusals_seen(server)
    began = time.monotonic()
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="echo", messages=MESSAGES, stream=True)
    held.close()
    assert sent[1:] == ["0", "1", "2"]  # sent[0] opened the held stream
    assert refusals_seen(server) - refused_before == 3  # ...and the server saw all three
    assert raised.value.code == "too_many_streams"
    assert raised.value.response.headers["retry-after"] == "1"
    assert raised.value.response.headers["retry-after-ms"] == "1000"
    assert 1.5 < time.monotonic() - began < 10


def test_a_spent_budget_is_a_429_the_sdk_does_not_retry(server: Server) -> None:
    """x-should-retry: false: the budget resets at the period's end, not in seconds."""
    key = create_api_key(server.env, "--budget-tokens", "90", "--budget-period", "day")
    sent: list[str] = []
    http = httpx.Client(
        event_hooks={"request": [lambda r: sent.append(r.headers["x-stainless-retry-count"])]}
    )
    client = server.client(key, http_client=http, max_retries=3)
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=MESSAGES, max_tokens=60
    )
    assert int(raw.headers["x-budget-remaining-tokens"]) == 90 - (9 + 43) // 4 - 60
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=60)
    assert sent == ["0", "0"]  # the refused call was not retried
    assert raised.value.code == "budget_exceeded"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert raised.value.body["reset_at"] == raised.value.response.headers["x-budget-reset"]


# --- failures, disconnects and resuming -------------------------------------------


def test_a_mid_stream_backend_failure_raises_from_the_iterator(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model="upstream/error-mid", messages=[{"role": "user", "content": words(6)}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)
    assert raised.value.body["code"] == "stream_interrupted"  # code and message not swapped
    assert "failed after streaming began" in raised.value.message
    assert [c.choices[0].delta.content for c in received[1:]] == ["w0", " w1"]


def test_the_raw_failure_has_no_done(server: Server) -> None:
    body = {
        "model": "upstream/error-mid",
        "messages": [{"role": "user", "content": words(6)}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {server.key}"}
    raw = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers).content
    assert b'data: {"error"' in raw and b"[DONE]" not in raw


def wait_for(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - began


def test_closing_a_stream_cancels_the_request_and_the_upstream_call(
    server: Server, upstream: FakeLLMServer
) -> None:
    raw = server.client().chat.completions.with_raw_response.create(
        model="upstream/slow", messages=[{"role": "user", "content": words(80)}], stream=True
    )
    request_id = raw.headers["x-orchestrator-request-id"]
    stream = raw.parse()
    chunks = iter(stream)
    next(chunks), next(chunks)  # the role, then the first token
    calls = len(upstream.requests)
    closed_at = time.monotonic()
    stream.close()
    wait_for(lambda: server.status(request_id)["status"] == "cancelled", GRACE + 1)
    wait_for(lambda: upstream.disconnected_at > closed_at, GRACE + 1)
    assert upstream.disconnected_at - closed_at < GRACE + 1
    assert len(upstream.requests) == calls  # cancelled, not retried


def test_a_dropped_stream_resumed_within_the_grace_completes_exactly_once(
    server: Server,
) -> None:
    prompt = words(40)  # 2 s at 50 ms a token: far longer than the grace
    body = {"model": "slow-echo", "messages": [{"role": "user", "content": prompt}], "stream": True}
    headers = {"Authorization": f"Bearer {server.key}"}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as r:
        request_id = r.headers["x-orchestrator-request-id"]
        next(r.iter_bytes())
    # Dropped; resume the same generation from its start on the native stream.
    tokens: dict[int, str] = {}
    with httpx.stream("GET", f"{server.url}/api/v1/stream/{request_id}", headers=headers) as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "token":
                data = json.loads(line[6:])
                assert data["chunk"] not in tokens
                tokens[data["chunk"]] = data["data"]
            elif line.startswith("data: ") and event in ("complete", "error"):
                assert event == "complete", line
                break
    assert "".join(tokens[i] for i in sorted(tokens)) == prompt
    time.sleep(GRACE + 0.3)
    assert server.status(request_id)["status"] == "completed"


def test_a_finished_completion_can_be_fetched_again(server: Server) -> None:
    client = server.client()
    created = client.chat.completions.create(model="echo", messages=MESSAGES)
    fetched = client.chat.completions.retrieve(created.id)
    assert fetched.choices[0].message.content == PROMPT
    assert fetched.id == created.id and fetched.usage == created.usage


def test_a_dropped_non_streamed_call_is_cancelled_after_the_grace(server: Server) -> None:
    body = {"model": "slow-echo", "messages": [{"role": "user", "content": words(60)}]}
    headers = {"Authorization": f"Bearer {server.key}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=0.3)
    rows = httpx.get(f"{server.url}/api/v1/requests/", headers=headers).json()["results"]
    request_id = next(r["request_id"] for r in rows if r["backend"] == "slow-echo")
    wait_for(lambda: server.status(request_id)["status"] == "cancelled", GRACE + 1.5)


# --- models -----------------------------------------------------------------------


def test_models_lists_the_backends_and_their_aliases(server: Server) -> None:
    ids = [model.id for model in server.client().models.list()]
    assert ids == ["echo", "slow-echo", "upstream", "upstream/ok"]
    assert server.client().models.retrieve("upstream/anything").id == "upstream/anything"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("local")


# --- the response cache, as an SDK sees it -------------------------------------------


def test_a_repeat_is_a_hit_streamed_or_not_and_extra_body_steers_the_cache(
    server: Server, upstream: FakeLLMServer
) -> None:
    client = server.client()
    ask = {"model": "upstream/cached", "messages": MESSAGES, "temperature": 0}
    before = upstream.calls["cached"]
    first = client.chat.completions.with_raw_response.create(**ask)
    assert first.headers["cache-status"] == "orchestrator; fwd=uri-miss; stored"
    hit = client.chat.completions.with_raw_response.create(**ask)
    assert hit.headers["cache-status"] == "orchestrator; hit"
    assert hit.headers["x-orchestrator-cache-key"] == first.headers["x-orchestrator-cache-key"]
    answer = hit.parse()
    assert answer.choices[0].message.content == first.parse().choices[0].message.content
    assert answer.model_extra["orchestrator"]["cache_status"] == "hit"
    assert answer.usage == first.parse().usage  # what the answer cost when it was made
    # A hit streams like any answer; its last chunk says it was one.
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
    assert chunks[-1].model_extra["orchestrator"]["cache_status"] == "hit"
    assert upstream.calls["cached"] == before + 1
    # The SDK's extra_body and extra_headers reach the cache.
    bypass = client.chat.completions.with_raw_response.create(
        **ask, extra_body={"cache": {"mode": "bypass"}}
    )
    assert bypass.headers["cache-status"] == "orchestrator; fwd=request"
    refresh = client.chat.completions.with_raw_response.create(
        **ask, extra_headers={"Cache-Control": "no-cache"}
    )
    assert refresh.headers["cache-status"] == "orchestrator; fwd=request; stored"
    sampled = client.chat.completions.with_raw_response.create(**{**ask, "temperature": 1})
    assert sampled.headers["cache-status"] == "orchestrator; fwd=bypass"
    assert upstream.calls["cached"] == before + 4
