"""Structured logs: every line carries the request it concerns.

``request_id``/``attempt`` are the inference request being worked on (set by the
worker per request task, and by the web once a request is known);
``http_request_id`` is the HTTP correlation id (``X-Request-ID``). Context
variables follow each asyncio task, so concurrent requests never mix.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
ATTEMPT: ContextVar[int] = ContextVar("attempt", default=0)
HTTP_REQUEST_ID: ContextVar[str] = ContextVar("http_request_id", default="")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def install_record_factory() -> None:
    """Stamp every log record, from any logger, with the current context."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "stamps_context", False):
        return

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.request_id = REQUEST_ID.get()
        record.attempt = ATTEMPT.get()
        record.http_request_id = HTTP_REQUEST_ID.get()
        return record

    stamped.stamps_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(stamped)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (production, DEBUG off)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "attempt", "http_request_id"):
            if getattr(record, key, None):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class RequestIdMiddleware:
    """ASGI: adopt a sane caller ``X-Request-ID`` (or make one) and echo it back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        HTTP_REQUEST_ID.set(request_id)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
