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
from django.core import signing

from inference.admission import Refusal
from inference.models import ApiKey, InferenceRequest, InferenceRequestQuerySet

STREAM_TOKEN_SALT = "inference.stream-token"


def unauthenticated(message: str, code: str) -> Refusal:
    """No usable credential: 401 over HTTP, close code 4401 on a WebSocket."""
    return Refusal(401, code, message)


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None = None
    staff: bool = False
    ip: str | None = None
    # A non-staff session user, or an anonymous caller while auth is required.
    refused: Refusal | None = None

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
            raise unauthenticated(
                "Send the key as 'Authorization: Bearer <key>'.", "invalid_api_key"
            )
        return token.strip()
    return headers.get("x-api-key") or None


def verify_key(raw: str) -> ApiKey:
    """The usable key ``raw`` names, or Refusal saying why not."""
    prefix, dot, secret = raw.partition(".")
    if not (dot and prefix and secret) or len(raw) > 128:
        raise unauthenticated("Malformed API key.", "invalid_api_key")
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or not key.is_valid(raw):
        raise unauthenticated("Invalid API key.", "invalid_api_key")
    if key.revoked:
        raise unauthenticated("This API key has been revoked.", "api_key_revoked")
    if key.has_expired:
        raise unauthenticated("This API key has expired.", "api_key_expired")
    key.touch()
    return key


def caller_for(key: ApiKey | None, user: Any, ip: str | None) -> Caller:
    """The caller behind a verified key (or none), a session user and an address."""
    if key is not None:
        return Caller(key=key, ip=ip)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return Caller(staff=True, ip=ip)
    refused: Refusal | None = None
    if settings.ORCHESTRATOR_AUTH_REQUIRED:
        if user is not None and user.is_authenticated:
            refused = Refusal(403, "forbidden", "Staff sessions or API keys only.")
        else:
            refused = unauthenticated("An API key is required.", "missing_api_key")
    return Caller(ip=ip, refused=refused)


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {
        name.decode("latin1").lower(): value.decode("latin1")
        for name, value in scope.get("headers", [])
    }


def authenticate_scope(scope: Mapping[str, Any]) -> Caller:
    """The caller of a WebSocket or SSE connection (the session user comes from
    Channels' AuthMiddleware). Raises Refusal for a bad key."""
    raw = presented_key(scope_headers(scope))
    key = verify_key(raw) if raw else None
    client = scope.get("client") or [None]
    return caller_for(key, scope.get("user"), client[0])


# --- SSE stream tokens -------------------------------------------------------------


def stream_token(request: InferenceRequest) -> str:
    """A signed token that lets its bearer stream this one request for a while."""
    payload = {"r": str(request.pk), "k": request.api_key_id}
    return signing.dumps(payload, salt=STREAM_TOKEN_SALT, compress=False)


def verify_stream_token(token: str, request_id: uuid.UUID) -> Caller:
    """The caller a stream token stands for, if it is genuine, fresh and for
    ``request_id``; Refusal otherwise. The key it names must still be usable."""
    try:
        payload = signing.loads(
            token, salt=STREAM_TOKEN_SALT, max_age=settings.ORCHESTRATOR_STREAM_TOKEN_SECONDS
        )
    except signing.SignatureExpired:
        raise unauthenticated("The stream token has expired.", "stream_token_expired") from None
    except signing.BadSignature:
        raise unauthenticated("Invalid stream token.", "invalid_stream_token") from None
    if not isinstance(payload, dict) or payload.get("r") != str(request_id):
        raise unauthenticated("The stream token is for another request.", "invalid_stream_token")
    prefix = payload.get("k")
    if prefix is None:
        return Caller()
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or key.revoked or key.has_expired:
        raise unauthenticated(
            "The key behind this stream token is no longer valid.", "api_key_revoked"
        )
    return Caller(key=key)
