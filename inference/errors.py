"""One JSON error shape everywhere: ``{"error": {message, type, code, param}}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from inference.admission import Quota, Refusal
from inference.parsers import RequestTooLarge

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "service_unavailable",
}


def error_body(
    message: str, status_code: int, code: str, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    error = {
        "message": message,
        "type": _TYPES.get(status_code, "api_error"),
        "code": code,
        "param": param,
    }
    error.update(extra)
    return {"error": error}


def _first_field_error(detail: Any, prefix: str = "") -> tuple[str | None, str, str]:
    """(param, message, code) of the first error in a nested ValidationError; an
    item of a list of objects is named by its index (``requests[3].prompt``)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # an item of a nested many=True, by its index
                return _first_field_error(value, f"{prefix}[{key}]")
            name = key if key != "non_field_errors" else ""
            path = f"{prefix}.{name}" if prefix and name else (name or prefix)
            return _first_field_error(value, path)
    if isinstance(detail, list) and detail:
        return _first_field_error(detail[0], prefix)
    code = getattr(detail, "code", "invalid") or "invalid"
    return (prefix or None), str(detail), str(code)


def validation_error_body(exc: exceptions.ValidationError) -> dict[str, Any]:
    """The error shape of a serializer's ValidationError; ``fields`` has them all."""
    param, message, code = _first_field_error(exc.detail)
    text = f"{param}: {message}" if param else message
    return error_body(text, 400, code, param, fields=exc.detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: map every failure to the error shape."""
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    if isinstance(exc, DatabaseError):
        exc = Refusal.from_database(exc)
    if isinstance(exc, Refusal):
        return refusal_response(exc, getattr(context.get("view"), "quotas", ()))
    if isinstance(exc, exceptions.ValidationError):
        return Response(validation_error_body(exc), status=400)
    response = exception_handler(exc, context)
    if response is None:
        return None  # a bug: let Django log it and answer 500 (JSON, see below)
    detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
    code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
    if isinstance(exc, Http404):
        code = "not_found"
    response.data = error_body(str(detail) or str(exc), response.status_code, str(code))
    return response


def refusal_body(refusal: Refusal) -> dict[str, Any]:
    return error_body(
        refusal.message, refusal.status, refusal.code, refusal.param, **refusal.details
    )


def refusal_response(refusal: Refusal, quotas: Iterable[Quota] = ()) -> Response:
    """A refusal over REST; ``quotas`` are the ones the call already counted in."""
    return Response(refusal_body(refusal), status=refusal.status, headers=refusal.headers(quotas))


async def send_asgi_error(send: Any, status: int, message: str, code: str) -> None:
    """The error shape as a whole ASGI HTTP response (for ASGI layers ahead of Django)."""
    body = json.dumps(error_body(message, status, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def not_found_response(message: str = "No such resource.") -> JsonResponse:
    return JsonResponse(error_body(message, 404, "not_found"), status=404)


@csrf_exempt  # the catch-all under /api/v1/: a POST to no route is a 404, not a CSRF page
def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """handler404 for paths no route matches."""
    return not_found_response(f"No route for {request.path}.")


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("Internal server error.", 500, "internal_error"), status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    """CSRF_FAILURE_VIEW: the error shape, not Django's HTML page."""
    body = error_body(f"CSRF verification failed: {reason}", 403, "csrf_failed")
    return JsonResponse(body, status=403)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("Bad request.", 400, "bad_request"), status=400)
