"""Structured logs carry the request id; X-Request-ID is adopted or made."""

from __future__ import annotations

import json
import logging

import pytest
from channels.testing import HttpCommunicator

from inference.logs import REQUEST_ID, JsonFormatter, RequestIdMiddleware
from pipeline.worker import Engine
from tests.conftest import asubmit, finished


@pytest.mark.django_db(transaction=True)
async def test_worker_log_lines_carry_the_request_id_and_attempt(engine: Engine, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    request = await asubmit(backend="exploding")
    await finished(request.pk)
    lines = [
        r for r in caplog.records if r.name == "pipeline.worker" and "failed" in r.getMessage()
    ]
    assert lines and lines[0].request_id == str(request.pk) and lines[0].attempt == 1
    unrelated = [r for r in caplog.records if r.getMessage().startswith("pipeline engine")]
    assert all(r.request_id == "" for r in unrelated)


def test_json_lines_have_the_context_fields() -> None:
    token = REQUEST_ID.set("abc-123")
    try:
        record = logging.getLogger("x").makeRecord(
            "x", logging.WARNING, "f", 1, "hello %s", ("you",), None
        )
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you" and line["level"] == "WARNING"
    assert line["request_id"] == "abc-123" and "ts" in line


async def ok_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("given", "kept"),
    [(b"trace-42.abc", True), (b"bad id with spaces", False), (b"x" * 200, False)],
)
async def test_x_request_id_is_echoed_when_sane_and_made_otherwise(
    given: bytes, kept: bool
) -> None:
    communicator = HttpCommunicator(
        RequestIdMiddleware(ok_app), "GET", "/", headers=[(b"x-request-id", given)]
    )
    response = await communicator.get_response()
    echoed = dict(response["headers"])[b"x-request-id"]
    assert (echoed == given) is kept
    assert len(echoed) <= 64
