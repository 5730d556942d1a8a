"""Who is calling, on every transport, and what they may see.

A caller is an API key (``Authorization: Bearer <key>`` or ``X-API-Key``), a
staff session (the chat page, the dashboard, the admin), or anonymous. With
``ORCHESTRATOR_AUTH_REQUIRED`` (the default when DEBUG is off) anonymous callers
are refused; in development they are let in, so ``make run`` needs no key.

Isolation: a key sees only its own requests and staff see all, on every route;
anyone else's request id answers 404, exactly like an unknown one.

SSE: a browser's EventSource cannot send headers, so ``POST /infer`` returns a
short-lived ``stream_token`` bound to that one request; the long-lived key never
travels in a URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core import signing
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from inference.models import ApiKey, InferenceRequest, InferenceRequestQuerySet

STREAM_TOKEN_SALT = "inference.stream-token"


class AuthFailed(Exception):
    """No usable credential: 401 over HTTP, close code 4401 on a WebSocket."""

    status = 401

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Forbidden(AuthFailed):
    """A known identity without access (a non-staff session): 403 / 4403."""

    status = 403


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None = None
    staff: bool = False
    ip: str | None = None
    # A non-staff session user, or an anonymous caller while auth is required.
    refused: AuthFailed | None = None

    @property
    def identity(self) -> str:
        """The bucket its rate limits count in."""
        return f"key:{self.key.prefix}" if self.key else f"ip:{self.ip or 'unknown'}"

    @property
    def key_prefix(self) -> str | None:
        return self.key.prefix if self.key else None

    def requests(self) -> InferenceRequestQuerySet:
        """The requests this caller may see: staff all, everyone else their own."""
        if self.staff:
            return InferenceRequest.objects.all()
        return InferenceRequest.objects.owned_by(self.key_prefix)

    @property
    def may_manage_documents(self) -> bool:
        if self.key is not None:
            return self.key.can_manage_documents
        return self.staff or not settings.ORCHESTRATOR_AUTH_REQUIRED

    def limit(self, name: str) -> int:
        """A per-key override of a server default (``requests_per_minute``,
        ``max_in_flight``); 0 means unlimited. Staff are not limited."""
        if self.staff:
            return 0
        override = getattr(self.key, name, None) if self.key else None
        if override is not None:
            return int(override)
        return int(getattr(settings, f"ORCHESTRATOR_{name.upper()}"))


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent (header names lower-case), or None."""
    authorization = headers.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("Send the key as 'Authorization: Bearer <key>'.", "invalid_api_key")
        return token.strip()
    return headers.get("x-api-key") or None


def verify_key(raw: str) -> ApiKey:
    """The usable key ``raw`` names, or AuthFailed saying why not."""
    prefix, dot, secret = raw.partition(".")
    if not (dot and prefix and secret) or len(raw) > 128:
        raise AuthFailed("Malformed API key.", "invalid_api_key")
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or not key.is_valid(raw):
        raise AuthFailed("Invalid API key.", "invalid_api_key")
    if key.revoked:
        raise AuthFailed("This API key has been revoked.", "api_key_revoked")
    if key.has_expired:
        raise AuthFailed("This API key has expired.", "api_key_expired")
    key.touch()
    return key


def caller_for(key: ApiKey | None, user: Any, ip: str | None) -> Caller:
    """The caller behind a verified key (or none), a session user and an address."""
    if key is not None:
        return Caller(key=key, ip=ip)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return Caller(staff=True, ip=ip)
    refused: AuthFailed | None = None
    if settings.ORCHESTRATOR_AUTH_REQUIRED:
        if user is not None and user.is_authenticated:
            refused = Forbidden("Staff sessions or API keys only.", "forbidden")
        else:
            refused = AuthFailed("An API key is required.", "missing_api_key")
    return Caller(ip=ip, refused=refused)


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {
        name.decode("latin1").lower(): value.decode("latin1")
        for name, value in scope.get("headers", [])
    }


def authenticate_scope(scope: Mapping[str, Any]) -> Caller:
    """The caller of a WebSocket or SSE connection (the session user comes from
    Channels' AuthMiddleware). Raises AuthFailed for a bad key."""
    raw = presented_key(scope_headers(scope))
    key = verify_key(raw) if raw else None
    client = scope.get("client") or [None]
    return caller_for(key, scope.get("user"), client[0])


# --- REST (Django REST framework) ---------------------------------------------------


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        try:
            raw = presented_key(request.headers)
            if raw is None:
                return None
            key = verify_key(raw)
        except AuthFailed as failed:
            raise exceptions.AuthenticationFailed(failed.message, failed.code) from None
        return AnonymousUser(), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


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
        refused = caller_of(request).refused
        if isinstance(refused, Forbidden):
            raise exceptions.PermissionDenied(refused.message, refused.code)
        if refused is not None:
            raise exceptions.NotAuthenticated(refused.message, refused.code)
        return True


class CanManageDocuments(permissions.BasePermission):
    """Reading the shared document store is open to callers; changing it is not."""

    message = "This key may not change the document store."
    code = "forbidden"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return caller_of(request).may_manage_documents


# --- SSE stream tokens -------------------------------------------------------------


def stream_token(request: InferenceRequest) -> str:
    """A signed token that lets its bearer stream this one request for a while."""
    payload = {"r": str(request.pk), "k": request.api_key_id}
    return signing.dumps(payload, salt=STREAM_TOKEN_SALT, compress=False)


def verify_stream_token(token: str, request_id: uuid.UUID) -> Caller:
    """The caller a stream token stands for, if it is genuine, fresh and for
    ``request_id``; AuthFailed otherwise. The key it names must still be usable."""
    try:
        payload = signing.loads(
            token, salt=STREAM_TOKEN_SALT, max_age=settings.ORCHESTRATOR_STREAM_TOKEN_SECONDS
        )
    except signing.SignatureExpired:
        raise AuthFailed("The stream token has expired.", "stream_token_expired") from None
    except signing.BadSignature:
        raise AuthFailed("Invalid stream token.", "invalid_stream_token") from None
    if not isinstance(payload, dict) or payload.get("r") != str(request_id):
        raise AuthFailed("The stream token is for another request.", "invalid_stream_token")
    prefix = payload.get("k")
    if prefix is None:
        return Caller()
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or key.revoked or key.has_expired:
        raise AuthFailed("The key behind this stream token is no longer valid.", "api_key_revoked")
    return Caller(key=key)
