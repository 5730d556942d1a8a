"""Django's stock middleware, without the thread hops.

Under ASGI, Django runs each hook of a classic middleware through
``sync_to_async(thread_sensitive=True)``: up to three thread hops per middleware
per request (a quarter of a submit's CPU here, bench/). The hooks of the seven
below do no blocking I/O, so their subclasses run them inline on the event loop;
the two that can touch the database — saving a modified session, storing flash
messages (the admin) — still go to the thread when they might.

``settings.MIDDLEWARE`` keeps the stock names (Django's deploy checks look for
them by name); ``ASGIHandler`` builds the chain from it, loading each stock class
as its subclass here (``INLINE``). tests/test_wiring.py pins what runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers import asgi
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils.module_loading import import_string


class InlineHooks:
    """``process_request`` and ``process_response`` inline; the response hook
    goes to the thread only when ``response_may_block`` says so."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)  # type: ignore[attr-defined]
        if hasattr(self, "process_response"):
            if self.response_may_block(request):
                hook = sync_to_async(self.process_response, thread_sensitive=True)
                return await hook(request, response)
            response = self.process_response(request, response)
        return response

    def response_may_block(self, request: HttpRequest) -> bool:
        return False


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    pass


class SessionMiddleware(InlineHooks, sessions.SessionMiddleware):
    """Loading is lazy (the first access, from a view, in its thread); saving a
    modified session writes to the database."""

    def response_may_block(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooks, csrf.CsrfViewMiddleware):
    """Its view hook reads cookies, headers and the (already read) body only."""

    async def process_view(self, *args: Any) -> HttpResponseBase | None:  # type: ignore[override]
        return super().process_view(*args)


class AuthenticationMiddleware(InlineHooks, auth.AuthenticationMiddleware):
    """Only attaches a lazy ``request.user``; the lookup happens on first use."""


class MessageMiddleware(InlineHooks, messages.MessageMiddleware):
    """Messages live in a cookie, falling back to the session: storing them may
    read the session from the database."""

    def response_may_block(self, request: HttpRequest) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass


INLINE = {
    f"{base.__module__}.{base.__name__}": f"{__name__}.{inline.__name__}"
    for inline in InlineHooks.__subclasses__()
    for base in inline.__bases__[1:]
}


class RequestThreads:
    """The thread each request's thread-sensitive code runs on, as Django wants:
    one per request at a time, but taken from the idle ones of earlier requests
    instead of started for it. Django starts one per request, and with it a new
    database connection: a sixth of the web process's CPU under long-poll load
    (thread start 10%, SQLite connect 7%; py-spy, bench b)."""

    def __init__(self, keep: int = 32) -> None:
        self.idle: list[ThreadPoolExecutor] = []
        self.keep = keep  # idle threads kept; a burst beyond them ends its extras

    def take(self) -> ThreadPoolExecutor:
        if self.idle:
            return self.idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(executor)
        else:
            executor.shutdown(wait=False)


class ASGIHandler(asgi.ASGIHandler):
    """Django's ASGI handler with an all-async middleware chain: each entry of
    ``settings.MIDDLEWARE`` is loaded as its ``INLINE`` subclass if it has one,
    and must be async-capable (no thread hop between middleware); each request's
    thread comes from ``RequestThreads``."""

    loaded: list[Any]  # the middleware instances, outermost first
    threads = RequestThreads()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)  # (Django's error)
        executor = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self.loaded = []
        handler = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        for path in reversed(settings.MIDDLEWARE):
            middleware = self._adopt(self._load(path)(handler))
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = handler

    @staticmethod
    def _load(path: str) -> Any:
        middleware = import_string(INLINE.get(path, path))
        if not getattr(middleware, "async_capable", False):
            raise ImproperlyConfigured(f"{path} is not async-capable; it cannot run here.")
        return middleware

    def _adopt(self, middleware: Any) -> Any:
        """Register its view, template-response and exception hooks, as Django does
        (the exception hooks run synchronously there too)."""
        self.loaded.insert(0, middleware)
        if hasattr(middleware, "process_view"):
            hook = self.adapt_method_mode(True, middleware.process_view)
            self._view_middleware.insert(0, hook)
        if hasattr(middleware, "process_template_response"):
            hook = self.adapt_method_mode(True, middleware.process_template_response)
            self._template_response_middleware.append(hook)
        if hasattr(middleware, "process_exception"):
            hook = self.adapt_method_mode(False, middleware.process_exception)
            self._exception_middleware.append(hook)
        return middleware
