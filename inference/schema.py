"""OpenAPI additions for routes served by Channels consumers, not DRF views."""

from __future__ import annotations

from typing import Any

SSE_DESCRIPTION = """\
Server-Sent Events: the request's tokens as they are generated.

Events: `start` `{request_id}`; `token` `{chunk, data}` with `id: <seq>` (a retried
attempt's ids are `<attempt>:<seq>`); `reset` `{attempt}` when a new attempt starts
(discard what was received); `complete` `{status: "done", result}`; `error`
`{error, status}`. A `: keepalive` comment about every 15 s. Send `Last-Event-ID`
to resume after that id; a late subscriber first receives every earlier token,
exactly once, in order.

The WebSocket protocol at `/api/v1/ws` is described in the README.
"""


def add_streaming_routes(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOK: document ``GET /api/v1/stream/{id}``."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    result["paths"]["/api/v1/stream/{request_id}"] = {
        "get": {
            "operationId": "stream",
            "summary": "Stream a request's tokens (Server-Sent Events)",
            "description": SSE_DESCRIPTION,
            "tags": ["api"],
            "parameters": [
                {
                    "name": "request_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this event id.",
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "404": {"description": "Unknown request id.", "content": error},
                "503": {"description": "Database unavailable.", "content": error},
            },
        }
    }
    return result
