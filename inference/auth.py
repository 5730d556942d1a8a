"""Who is calling, on every transport, and what they may see.

A caller is an API key (``Authorization: Bearer <key>`` or ``X-API-Key``), a
staff session (the chat page, the dashboard, the admin), a member's session (a
signed-in account without staff rights: the chat page and its own requests), or
anonymous. With ``ORCHESTRATOR_AUTH_REQUIRED`` (the default when DEBUG is off)
anonymous callers are refused; in development they are let in, so ``make run``
needs no key.

Isolation: a key or a member sees only its own requests and staff see all, on
every route; anyone else's request id answers 404, exactly like an unknown one.

SSE: a browser's EventSource cannot send headers, so ``POST /infer`` returns a
short-lived ``stream_token`` bound to that one request; the long-lived key never
travels in a URL.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import DatabaseError

from inference import admission
from inference.admission import Refusal
from inference.models import ApiKey, InferenceRequest, InferenceRequestQuerySet

STREAM_TOKEN_SALT = "inference.stream-token"


def unauthenticated(message: str, code: str) -> Refusal:
    """No usable credential: 401 over HTTP, close code 4401 on a WebSocket."""
    return Refusal(401, code, message)


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None = None
    # A staff session's user and its model permissions: the API grants staff
    # exactly what the admin grants them.
    user: Any = None
    perms: frozenset[str] = frozenset()
    ip: str | None = None
    # An anonymous caller while auth is required.
    refused: Refusal | None = None
    # A signed-in account without staff rights: it owns the requests it submits.
    member: Any = None

    @property
    def staff(self) -> bool:
        return self.user is not None

    @property
    def identity(self) -> str:
        """The bucket its rate limits count in."""
        if self.key:
            return f"key:{self.key.prefix}"
        return f"user:{self.member.pk}" if self.member else f"ip:{self.ip or 'unknown'}"

    @property
    def key_prefix(self) -> str | None:
        return self.key.prefix if self.key else None

    @property
    def person_id(self) -> int | None:
        """The signed-in account behind it (a member or staff; None for a key)."""
        if self.key is not None:
            return None
        person = self.member or self.user
        return person.pk if person is not None else None

    def own_requests(self) -> InferenceRequestQuerySet:
        """The requests it submitted itself (anonymous callers: those submitted
        with neither a key nor an account)."""
        return InferenceRequest.objects.owned_by(self.key_prefix, self.person_id)

    def require(self, action: str, model: str = "inferencerequest") -> None:
        """A staff session needs the model permission the admin would want
        (``view``, ``add``, ``change``, ``delete``); keys have their own rules."""
        perm = f"inference.{action}_{model}"
        if self.staff and perm not in self.perms:
            raise Refusal(403, "forbidden", f"This account lacks the {perm} permission.")

    def requests(self) -> InferenceRequestQuerySet:
        """The requests this caller may see: staff (who may view them) all,
        everyone else their own."""
        if self.staff:
            self.require("view")
            return InferenceRequest.objects.all()
        return self.own_requests()

    def may_change_documents(self, action: str) -> bool:
        """``add`` or ``delete`` in the shared document store."""
        if self.key is not None:
            return self.key.can_manage_documents
        if self.staff:
            return f"inference.{action}_document" in self.perms
        return self.member is None and not settings.ORCHESTRATOR_AUTH_REQUIRED

    def priority(self, asked: int) -> int:
        """The priority a request asking for ``asked`` gets: a key's ceiling clamps it."""
        ceiling = self.key.max_priority if self.key else None
        return asked if ceiling is None else min(asked, ceiling)

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


def key_from(headers: Mapping[str, str], lenient: bool = False) -> ApiKey | None:
    """The verified key in ``headers`` (None: none sent); a 401 Refusal for a bad
    one, unless ``lenient`` while keys are not required: OpenAI clients always
    send a key (the SDKs insist on one), and vLLM's and Ollama's servers ignore
    it when they need none."""
    try:
        raw = presented_key(headers)
        return verify_key(raw) if raw else None
    except Refusal:
        if lenient and not settings.ORCHESTRATOR_AUTH_REQUIRED:
            return None
        raise


def caller_for(key: ApiKey | None, user: Any, ip: str | None) -> Caller:
    """The caller behind a verified key (or none), a session user and an address."""
    if key is not None:
        return Caller(key=key, ip=ip)
    if user is not None and user.is_authenticated and user.is_active:
        if user.is_staff:
            return Caller(user=user, perms=frozenset(user.get_all_permissions()), ip=ip)
        return Caller(member=user, ip=ip)
    refused: Refusal | None = None
    if settings.ORCHESTRATOR_AUTH_REQUIRED:
        refused = unauthenticated("An API key is required.", "missing_api_key")
    return Caller(ip=ip, refused=refused)


def scope_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {
        name.decode("latin1").lower(): value.decode("latin1")
        for name, value in scope.get("headers", [])
    }


def authenticate_scope(
    scope: Mapping[str, Any],
    token: str | None = None,
    request_id: uuid.UUID | None = None,
    lenient: bool = False,
) -> Caller:
    """The caller of a WebSocket or SSE connection: a stream ``token`` for
    ``request_id`` (SSE from a browser), else a key header or the session user
    (from Channels' AuthMiddleware). Raises a 401 Refusal for a bad credential
    (a 429 for an address that keeps sending them)."""
    client = scope.get("client") or [None]
    try:
        if token is not None and request_id is not None:
            return verify_stream_token(token, request_id)
        key = key_from(scope_headers(scope), lenient)
    except Refusal as refusal:
        raise admission.limit_unauthenticated(client[0], refusal) from None
    return caller_for(key, scope.get("user"), client[0])


# --- SSE stream tokens -------------------------------------------------------------


def stream_token(request: InferenceRequest) -> str:
    """A signed token that lets its bearer stream this one request for a while."""
    payload = {"r": str(request.pk), "k": request.api_key_id, "u": request.owner_id}
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
    if prefix is None and payload.get("u") is not None:
        member = get_user_model().objects.filter(pk=payload["u"], is_active=True).first()
        if member is None:
            raise unauthenticated(
                "The account behind this stream token is disabled.", "account_disabled"
            )
        return Caller(member=member)
    if prefix is None:
        return Caller()
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or key.revoked or key.has_expired:
        raise unauthenticated(
            "The key behind this stream token is no longer valid.", "api_key_revoked"
        )
    return Caller(key=key)


# --- the credential of an open connection ----------------------------------------


# When each credential last passed ``recheck`` in this process (monotonic seconds).
_verified: dict[str, float] = {}


def recheck(caller: Caller, max_age: float = 0) -> None:
    """Refuse a connection's caller whose key was revoked, expired or deleted
    (or whose staff account was disabled) since it connected. Sockets ask before
    each message (``max_age`` 0); idle connections every
    ``ORCHESTRATOR_CREDENTIAL_RECHECK_SECONDS``, sharing one answer per
    credential per process for that long, so 10,000 sockets cost one query."""
    if not (caller.key or caller.staff or caller.member):
        return
    if caller.key:
        name = caller.identity
    else:  # one account may be staff, then a member (demoted): separate answers
        name = f"{'member' if caller.member else 'staff'}:{caller.person_id}"
    if max_age and time.monotonic() - _verified.get(name, -1e9) < max_age:
        return
    _verified.pop(name, None)
    if caller.key is not None:
        _recheck_key(caller.key.prefix)
    elif caller.member is not None:
        if not get_user_model().objects.filter(pk=caller.member.pk, is_active=True).exists():
            raise Refusal(403, "forbidden", "This account has been disabled.")
    elif not staff_users().filter(pk=caller.user.pk).exists():
        raise Refusal(403, "forbidden", "This account is no longer staff.")
    _verified[name] = time.monotonic()


def staff_users() -> Any:
    return get_user_model().objects.filter(is_active=True, is_staff=True)


def _recheck_key(prefix: str) -> None:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None:
        raise unauthenticated("This API key no longer exists.", "api_key_revoked")
    if key.revoked:
        raise unauthenticated("This API key has been revoked.", "api_key_revoked")
    if key.has_expired:
        raise unauthenticated("This API key has expired.", "api_key_expired")


class ConnectionTerm:
    """How long an open SSE stream or WebSocket may go on: while its caller's
    credential holds (re-checked every ``ORCHESTRATOR_CREDENTIAL_RECHECK_SECONDS``)
    and until its lifetime, ``ORCHESTRATOR_CONNECTION_MAX_SECONDS``, ends."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.interval = settings.ORCHESTRATOR_CREDENTIAL_RECHECK_SECONDS
        now = time.monotonic()
        self.next_check = now + self.interval
        self.ends = now + settings.ORCHESTRATOR_CONNECTION_MAX_SECONDS

    def seconds_to_next_check(self) -> float:
        return max(0.0, min(self.next_check, self.ends) - time.monotonic())

    async def check(self) -> None:
        """Raise a Refusal once the term is over: 401/403 when the credential no
        longer holds, 408 at the end of the lifetime (reconnect and resume)."""
        now = time.monotonic()
        if now >= self.ends:
            raise Refusal(408, "connection_lifetime", "The connection reached its lifetime.")
        if now < self.next_check:
            return
        self.next_check = now + self.interval
        with contextlib.suppress(DatabaseError):  # an outage is not a revocation
            await database_sync_to_async(recheck)(self.caller, self.interval)


def reset() -> None:
    """Forget the re-check answers (``orchestrator_site.state.reset``)."""
    _verified.clear()
