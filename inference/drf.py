"""Django REST framework's hooks into auth and admission (``REST_FRAMEWORK`` in
settings names them): the key authentication, the permissions, the per-call rate
throttle and the RateLimit headers of every response.

A refusal is raised as the one ``admission.Refusal``; ``inference.errors``
renders it. The quotas an allowed call used ride on the view (DRF makes one view
per request and hands it to throttles and to the exception handler).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions
from rest_framework.exceptions import ErrorDetail
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from inference import admission
from inference.admission import Quota, Refusal
from inference.auth import Caller, caller_for, key_from
from inference.models import ApiKey


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

    lenient = False  # see auth.key_from

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        try:
            key = key_from(request.headers, self.lenient)
            if key is None:
                return None
        except Refusal as failed:
            refusal = admission.limit_unauthenticated(request.META.get("REMOTE_ADDR"), failed)
            if refusal is not failed:
                raise refusal from None  # the address's 429
            # DRF's contract for authenticators (it adds WWW-Authenticate).
            raise exceptions.AuthenticationFailed(failed.message, failed.code) from None
        return AnonymousUser(), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class OpenAIKeyAuthentication(ApiKeyAuthentication):
    """``/v1``: keys only (no session), and a key that does not verify is
    ignored while keys are not required, as OpenAI-compatible servers do."""

    lenient = True


def caller_of(request: Request) -> Caller:
    """The caller of a DRF request (cached on it: views and throttles share it)."""
    cached = getattr(request, "_caller", None)
    if cached is None:
        key = request.auth if isinstance(request.auth, ApiKey) else None
        cached = caller_for(key, request.user, request.META.get("REMOTE_ADDR") or None)
        setattr(request, "_caller", cached)  # noqa: B010  (DRF's Request has no slot for it)
    return cached


class IsPermittedCaller(permissions.BasePermission):
    """A key or a staff session (anyone while auth is not required)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = caller_of(request)
        if caller.refused is not None:
            raise admission.limit_unauthenticated(caller.ip, caller.refused)
        return True


class CanManageDocuments(permissions.BasePermission):
    """Reading the shared document store is open to callers; changing it is not."""

    message = "This key may not change the document store."
    code = "forbidden"

    def has_permission(self, request: Request, view: Any) -> bool:
        caller = caller_of(request)
        if request.method in permissions.SAFE_METHODS:
            caller.require("view", "document")
            return True
        return caller.may_change_documents("delete" if request.method == "DELETE" else "add")


class CallerRateThrottle(BaseThrottle):
    """Counts every API call against the caller's per-minute rate."""

    def allow_request(self, request: Request, view: Any) -> bool:
        quota = admission.count_call(caller_of(request))  # raises the 429
        view.quotas = [quota] if quota else []
        return True


def unknown_field(name: str, known: Iterable[str], what: str = "field") -> ErrorDetail:
    """A 400's detail for a name the API does not have, with the likely intended one."""
    message = f"Unknown {what} {name!r}."
    if close := difflib.get_close_matches(name, list(known), n=1):
        message += f" Did you mean {close[0]!r}?"
    elif name == "model":
        message += " Pick a model by its backend: 'backend' (GET /v1/models lists them)."
    return ErrorDetail(message, code=f"unknown_{what.replace(' ', '_')}")


class KnownQueryOnly:
    """A list route: a query parameter it does not take (a filter, the page's
    cursor and size) is a 400 naming it, not silently an unfiltered list."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        if getattr(self, "action", None) != "list":
            return
        known = {"format"}
        if filters := getattr(self, "filterset_class", None):
            known |= set(filters.base_filters)
        if paginator := getattr(self, "paginator", None):
            known |= {paginator.cursor_query_param, paginator.page_size_query_param}
        unknown = [name for name in request.query_params if name not in known]
        if unknown:
            what = "query parameter"
            raise exceptions.ValidationError(
                {name: [unknown_field(name, known, what)] for name in unknown}
            )


class QuotaHeadersMixin:
    """Adds the caller's RateLimit headers to every response of an API view
    (a refusal's response already has its own and the call's), and keeps every
    answer out of shared and browser caches: they are per caller."""

    quotas: list[Quota] = []

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        for name, value in admission.quota_headers(self.quotas).items():
            response.setdefault(name, value)
        response.setdefault("Cache-Control", "no-store")
        return response
