from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "request_too_large"


class LimitedJSONParser(JSONParser):
    """JSON with a body cap.

    DRF reads the raw request stream, which bypasses Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE; so the cap is enforced here, on the bytes
    actually read (a missing or lying Content-Length changes nothing).
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = settings.ORCHESTRATOR_MAX_BODY_BYTES
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:  # "[[[[..." a million deep: a bad body, not a crash
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
