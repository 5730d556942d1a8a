"""REST endpoints. Views parse, call a service, and serialize; nothing else.

The submit, status and result routes are async (adrf) so a long-poll holds no
thread; the ``requests`` viewset is plain DRF. Database calls use
``sync_to_async`` (not ``database_sync_to_async``): Django's request signals
already manage the connection of the thread they run on.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from adrf.views import APIView as AsyncAPIView
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.decorators import method_decorator
from django.utils.text import slugify
from django.views.generic import TemplateView
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, pagination, permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from inference import events, services
from inference.auth import Caller
from inference.budgets import budget_headers
from inference.drf import (
    CanManageDocuments,
    IsPermittedCaller,
    KnownQueryOnly,
    QuotaHeadersMixin,
    caller_of,
)
from inference.models import (
    Document,
    InferenceRequest,
    Status,
    Transport,
    tier_of,
)
from inference.serializers import (
    CACHE_HEADER_PARAMETERS,
    CACHE_KEY,
    EXPORT_FORMATS,
    BatchAcceptedSerializer,
    BatchInferSerializer,
    CacheFlushSerializer,
    CacheStatsSerializer,
    ConfigSerializer,
    DocumentDetailSerializer,
    DocumentSerializer,
    ErrorSerializer,
    HealthSerializer,
    InferenceRequestSerializer,
    InferRequestSerializer,
    SessionCursorField,
    SessionExportQuerySerializer,
    SessionExportSerializer,
    SessionListQuerySerializer,
    SessionPageSerializer,
    SessionRenameSerializer,
    SessionSerializer,
    SessionSummarySerializer,
    StatusSerializer,
    StreamableRequestSerializer,
    UsageQuerySerializer,
    UsageReportSerializer,
    cache_headers,
    idempotency_key_of,
    session_markdown,
)

# Errors every API operation shares (401, 403, 429, 503, 400, 404) are added by
# inference.schema.OrchestratorAutoSchema; views declare only their own.
TOO_LARGE = OpenApiResponse(ErrorSerializer, description="Body too large.")


class APIView(QuotaHeadersMixin, AsyncAPIView):
    """An async API view whose responses carry the caller's RateLimit headers."""

    def check_throttles(self, request: Request) -> None:
        """Our throttles are synchronous: adrf's own check also hops back to the
        event loop for async ones, even when there are none (an ``async_to_sync``
        per call, 4% of a long-poll's web CPU)."""
        durations = self.check_sync_throttles(request, self.get_throttles())
        if durations:
            self.throttled(request, max((d for d in durations if d is not None), default=None))


class PublicAPIView(AsyncAPIView):
    """Health probes: no key, no rate limit (a bad key sent here is ignored)."""

    authentication_classes = ()
    permission_classes = (permissions.AllowAny,)
    throttle_classes = ()


def parse_request_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Http404("No request with that id.") from None


async def get_request_or_404(caller: Caller, value: str) -> InferenceRequest:
    """The caller's request; anyone else's is as unknown as a missing one."""
    try:
        return await caller.requests().aget(pk=parse_request_id(value))
    except InferenceRequest.DoesNotExist:
        raise Http404("No request with that id.") from None


class InferView(APIView):
    @extend_schema(
        operation_id="infer",
        summary="Submit a prompt",
        request=InferRequestSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "maxLength": 255},
                OpenApiParameter.HEADER,
                description=(
                    "Resubmitting with the same key returns the first request (200); "
                    "with another request under it, a 422."
                ),
            ),
            *CACHE_HEADER_PARAMETERS,
        ],
        responses={
            202: OpenApiResponse(StreamableRequestSerializer, description="Accepted (committed)."),
            200: OpenApiResponse(StreamableRequestSerializer, description="Idempotent replay."),
            413: TOO_LARGE,
            422: OpenApiResponse(
                ErrorSerializer, description="The Idempotency-Key was used for another request."
            ),
        },
    )
    async def post(self, request: Request) -> Response:
        serializer = InferRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        submission = serializer.to_submission(
            headers=request.headers,
            transport=Transport.REST,
            idempotency_key=idempotency_key_of(request.headers.get("Idempotency-Key")),
            caller=caller_of(request),
        )
        row, created = await services.asubmit_request(submission)
        status_url = reverse("inference:status", args=[row.pk])
        return Response(
            StreamableRequestSerializer(row).data,
            status=202 if created else 200,
            headers={
                "Location": status_url,
                "X-Priority-Applied": tier_of(row.priority),
                **budget_headers(row),
            },
        )


class BatchInferView(APIView):
    @extend_schema(
        operation_id="infer_batch",
        summary="Submit many prompts at once",
        description=(
            "Up to `requests.max_batch` (1,000) requests, each exactly a `POST /api/v1/infer` "
            "body. All or nothing: one invalid item is a 400 naming it by index "
            "(`requests[3].prompt`), and a batch that does not fit the queue, the key's "
            "in-flight slots or its budget is refused whole. Each accepted item is an "
            "ordinary durable request (its own id, status, stream), stored by one "
            "multi-row INSERT. No Idempotency-Key: a batch is not replayed."
        ),
        request=BatchInferSerializer,
        parameters=[*CACHE_HEADER_PARAMETERS],
        responses={
            202: OpenApiResponse(BatchAcceptedSerializer, description="Accepted (committed)."),
            413: TOO_LARGE,
        },
    )
    async def post(self, request: Request) -> Response:
        serializer = BatchInferSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        submissions = serializer.to_submissions(
            headers=request.headers, transport=Transport.REST, caller=caller_of(request)
        )
        rows = await sync_to_async(services.submit_batch)(submissions, ring=False)
        await events.submitted.ring()
        body = {"requests": StreamableRequestSerializer(rows, many=True).data}
        return Response(body, status=202, headers=budget_headers(rows[-1]))


class StatusView(APIView):
    @extend_schema(
        operation_id="status",
        summary="A request's status",
        responses={200: StatusSerializer},
    )
    async def get(self, request: Request, request_id: str) -> Response:
        row = await get_request_or_404(caller_of(request), request_id)
        position = None
        if row.status == Status.PENDING:
            position = await sync_to_async(InferenceRequest.objects.ahead_of)(row) + 1
        body = StatusSerializer(row, context={"queue_position": position}).data
        return Response(body, headers=cache_headers(row))


class ResultView(APIView):
    @extend_schema(
        operation_id="result",
        summary="A request's result: 200 once finished, 202 while not",
        parameters=[
            OpenApiParameter(
                "wait",
                {"type": "number", "minimum": 0},
                description=(
                    "Long-poll: wait up to this many seconds for the request to "
                    "finish (capped by the server)."
                ),
            )
        ],
        responses={
            200: OpenApiResponse(InferenceRequestSerializer, description="Finished."),
            202: OpenApiResponse(InferenceRequestSerializer, description="Still running."),
        },
    )
    async def get(self, request: Request, request_id: str) -> Response:
        row = await get_request_or_404(caller_of(request), request_id)
        row = await services.await_result(row, wait_seconds(request.query_params.get("wait")))
        body = InferenceRequestSerializer(row).data
        return Response(body, status=200 if row.is_terminal else 202, headers=cache_headers(row))


def wait_seconds(raw: str | None) -> float:
    """``?wait=`` as seconds, capped by the server; not a number >= 0 is a 400."""
    try:
        wait = float(raw) if raw is not None else 0.0
    except ValueError:
        wait = -1.0
    if not (math.isfinite(wait) and wait >= 0):
        raise ValidationError({"wait": ["wait must be a number of seconds, 0 or more."]})
    return min(wait, settings.ORCHESTRATOR_RESULT_WAIT_MAX_SECONDS)


class ChatPageView(TemplateView):
    """The WebSocket chat page: open in development; once keys are required, for
    signed-in accounts (its socket then authenticates with the session), each
    with its own conversations."""

    template_name = "chat.html"
    # Behind the Markdown sanitiser, a second line: the page loads nothing from
    # elsewhere (an answer's remote image or stylesheet would be a beacon).
    CONTENT_SECURITY_POLICY = (
        "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
        "script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        page = super().dispatch
        if settings.ORCHESTRATOR_AUTH_REQUIRED:
            page = login_required(page)
        response = page(request, *args, **kwargs)
        response.setdefault("Content-Security-Policy", self.CONTENT_SECURITY_POLICY)
        return response

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        backends = services.offered_backends(show_echo=settings.DEBUG)
        names = [backend["name"] for backend in backends]
        default = settings.ORCHESTRATOR_DEFAULT_BACKEND
        return {
            **super().get_context_data(**kwargs),
            "backends": backends,
            # A hidden default (echo with DEBUG off) leaves the first shown one.
            "default_backend": default if default in names else next(iter(names), ""),
        }


@method_decorator(staff_member_required, name="dispatch")
class DashboardView(TemplateView):
    """Live charts of throughput, latency, queue and errors (fed by /dashboard/feed)."""

    template_name = "dashboard.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        interval = settings.ORCHESTRATOR_DASHBOARD_INTERVAL_SECONDS
        return {**super().get_context_data(**kwargs), "interval": interval}


class RequestFilter(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=Status.choices)
    session_id = filters.CharFilter()
    backend = filters.CharFilter()

    class Meta:
        model = InferenceRequest
        fields = ["status", "session_id", "backend"]


class NewestFirst(pagination.CursorPagination):
    """Newest first; ``page_size`` 1-500 (anything else is a 400, not ignored)."""

    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            message = f"page_size must be an integer from 1 to {self.max_page_size}."
            raise ValidationError({"page_size": [message]}, code="invalid")
        return int(raw)

    def decode_cursor(self, request: Request) -> Any:
        """DRF answers a mangled cursor with 404, and one whose position is not a
        time with a 500 from the query: both are bad input."""
        try:
            cursor = super().decode_cursor(request)
            position = cursor.position if cursor is not None else None
            if position is not None and parse_datetime(str(position)) is None:
                raise ValueError(position)
            return cursor
        except (NotFound, ValueError):
            raise ValidationError({"cursor": ["Invalid cursor."]}) from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


class RequestViewSet(
    KnownQueryOnly,
    QuotaHeadersMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Inference requests: list (filter by status, session_id, backend), retrieve, cancel.
    A key sees its own requests only; staff see all."""

    queryset = InferenceRequest.objects.all()
    serializer_class = InferenceRequestSerializer
    filterset_class = RequestFilter
    pagination_class = NewestFirst
    lookup_field = "pk"
    lookup_url_kwarg = "request_id"

    def get_queryset(self) -> Any:
        return caller_of(self.request).requests()

    @extend_schema(request=None, responses={200: InferenceRequestSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, request_id: str) -> Response:
        """Cancel a pending or running request (a finished one is returned unchanged)."""
        caller_of(request).require("change")
        row = self.get_object()
        return Response(self.get_serializer(services.cancel_request(row.pk)).data)


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


async def _check_channel_layer() -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel("health")
    await layer.send(channel, {"type": "health.ping"})
    await layer.receive(channel)
    return "ok"


class HealthView(PublicAPIView):
    """Readiness: the database and the channel layer answer."""

    @extend_schema(
        operation_id="health",
        summary="Health check (database and channel layer)",
        responses={200: HealthSerializer, 503: HealthSerializer},
    )
    async def get(self, request: Request) -> Response:
        checks = {
            "database": await _probe(sync_to_async(_check_database)()),
            "channel_layer": await _probe(_check_channel_layer()),
        }
        healthy = all(value == "ok" for value in checks.values())
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "checks": checks,
            "worker_mode": settings.ORCHESTRATOR_WORKER_MODE,
            "version": settings.SPECTACULAR_SETTINGS["VERSION"],
        }
        return Response(body, status=200 if healthy else 503)


class LivenessView(PublicAPIView):
    """Liveness: the process answers; no dependency is checked."""

    @extend_schema(
        operation_id="health_live", summary="Liveness", responses={200: HealthSerializer}
    )
    async def get(self, request: Request) -> Response:
        return Response(
            {
                "status": "healthy",
                "checks": {},
                "worker_mode": settings.ORCHESTRATOR_WORKER_MODE,
                "version": settings.SPECTACULAR_SETTINGS["VERSION"],
            }
        )


async def _probe(check) -> str:  # type: ignore[no-untyped-def]
    try:
        return await asyncio.wait_for(check, timeout=3)
    except Exception as exc:
        return f"error: {type(exc).__name__}"


class DocumentViewSet(
    KnownQueryOnly,
    QuotaHeadersMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The document store RAG retrieves from: add, list, show, delete.

    Adding a document with the ``source`` of an existing one replaces it. The
    store is shared: any caller may read it, changing it takes staff or a key
    with ``can_manage_documents``.
    """

    queryset = Document.objects.prefetch_related("chunks")
    permission_classes = (IsPermittedCaller, CanManageDocuments)
    pagination_class = NewestFirst

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return DocumentDetailSerializer if self.action == "retrieve" else DocumentSerializer

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = services.ingest_document(
            data["title"], data["text"], data.get("source", "")
        )


class ConfigView(APIView):
    """The effective configuration of the process that answers (staff only)."""

    @extend_schema(operation_id="config", responses={200: ConfigSerializer})
    async def get(self, request: Request) -> Response:
        require_staff(request)
        loaded = settings.ORCHESTRATOR_CONFIGURATION
        body = {"hash": loaded.hash, "file": loaded.path, "keys": loaded.report()}
        return Response(ConfigSerializer(body).data)


class SessionView(APIView):
    """A conversation: the requests sharing a ``session_id``, oldest first."""

    @extend_schema(operation_id="session", responses={200: SessionSerializer})
    async def get(self, request: Request, session_id: str) -> Response:
        found = await sync_to_async(services.session_turns)(caller_of(request), session_id)
        if found is None:
            raise Http404("No session with that id.")
        summary, turns = found
        body = {"session_id": session_id, "title": summary.title, "turns": turns}
        return Response(SessionSerializer(body).data)

    @extend_schema(
        operation_id="session_rename",
        request=SessionRenameSerializer,
        responses={200: SessionSummarySerializer},
    )
    async def patch(self, request: Request, session_id: str) -> Response:
        body = SessionRenameSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        caller = caller_of(request)
        if "title" in body.validated_data:
            rename = sync_to_async(services.rename_session)
            summary = await rename(caller, session_id, body.validated_data["title"])
        else:
            summary = await sync_to_async(services.session_summary)(caller, session_id)
        if summary is None:
            raise Http404("No session with that id.")
        return Response(SessionSummarySerializer(summary).data)

    @extend_schema(operation_id="session_delete", responses={204: None})
    async def delete(self, request: Request, session_id: str) -> Response:
        caller = caller_of(request)
        caller.require("delete")
        if not await sync_to_async(services.forget_session)(caller, session_id):
            raise Http404("No session with that id.")
        return Response(status=204)


def query_of(request: Request) -> Any:
    """The query parameters a view validates: ``format`` is content negotiation's."""
    query = request.query_params.copy()
    query.pop("format", None)
    return query


class SessionListView(APIView):
    """The caller's conversations (its requests grouped by ``session_id``)."""

    @extend_schema(
        operation_id="sessions",
        parameters=[SessionListQuerySerializer],
        responses={200: SessionPageSerializer},
    )
    async def get(self, request: Request) -> Response:
        query = SessionListQuerySerializer(data=query_of(request))
        query.is_valid(raise_exception=True)
        page = await sync_to_async(services.list_sessions)(
            caller_of(request),
            page_size=query.validated_data["page_size"],
            after=query.validated_data.get("cursor"),
        )
        next_url = None
        if page.after is not None:
            cursor = SessionCursorField.encode(page.after)
            next_url = replace_query_param(request.build_absolute_uri(), "cursor", cursor)
        body = {"next": next_url, "results": page.sessions}
        return Response(SessionPageSerializer(body).data)


class JSONErrorsOnly(BaseContentNegotiation):
    """The export picks its format from its own ``format`` parameter (which DRF
    would read as a renderer's name); everything else, errors too, is JSON."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


class SessionExportView(APIView):
    """A conversation as a download: JSON (its turns) or a Markdown transcript."""

    content_negotiation_class = JSONErrorsOnly

    @extend_schema(
        operation_id="session_export",
        parameters=[SessionExportQuerySerializer],
        responses={
            (200, "application/json"): SessionExportSerializer,
            (200, "text/markdown"): OpenApiTypes.STR,
        },
    )
    async def get(self, request: Request, session_id: str) -> HttpResponseBase:
        query = SessionExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        found = await sync_to_async(services.session_turns)(caller_of(request), session_id)
        if found is None:
            raise Http404("No session with that id.")
        summary, turns = found
        export = SessionExportSerializer(
            {
                "session_id": session_id,
                "title": summary.title,
                "exported_at": timezone.now(),
                "turns": turns,
            }
        ).data
        if EXPORT_FORMATS[query.validated_data["format"]] == "markdown":
            response: HttpResponseBase = HttpResponse(
                session_markdown(export), content_type="text/markdown; charset=utf-8"
            )
            extension = "md"
        else:
            response, extension = Response(export), "json"
        parts = (slugify(summary.title)[:50] or "conversation", slugify(session_id)[:12])
        name = "-".join(part for part in parts if part)
        response["Content-Disposition"] = f'attachment; filename="{name}.{extension}"'
        return response


def require_staff(request: Request) -> None:
    if not caller_of(request).staff:
        raise PermissionDenied("Staff only.")


class CacheStatsView(APIView):
    """What the response cache holds and did over the last day (staff only)."""

    @extend_schema(
        operation_id="cache_stats", tags=["cache"], responses={200: CacheStatsSerializer}
    )
    async def get(self, request: Request) -> Response:
        require_staff(request)
        stats = await sync_to_async(services.cache_stats)()
        return Response(CacheStatsSerializer(stats).data)


class CacheView(APIView):
    """``DELETE``: flush the whole response cache (staff only)."""

    @extend_schema(
        operation_id="cache_flush", tags=["cache"], responses={200: CacheFlushSerializer}
    )
    async def delete(self, request: Request) -> Response:
        require_staff(request)
        flushed = await sync_to_async(services.flush_cache)()
        return Response(CacheFlushSerializer(flushed).data)


class CacheEntryView(APIView):
    """``DELETE``: stop serving the answers stored under a key (the
    ``X-Orchestrator-Cache-Key`` of a hit or a store): the owner's, or any (staff)."""

    @extend_schema(
        operation_id="cache_forget",
        tags=["cache"],
        responses={204: None, 404: OpenApiResponse(ErrorSerializer, description="No entry.")},
    )
    async def delete(self, request: Request, cache_key: str) -> Response:
        caller = caller_of(request)
        caller.require("change")
        forget = sync_to_async(caller.requests().forget_cached)
        if not CACHE_KEY.fullmatch(cache_key) or not await forget(cache_key):
            raise Http404("No cached answer under that key.")
        return Response(status=204)


class UsageView(APIView):
    """Tokens and cost of finished requests over time: a key's own (staff: any key's,
    or everyone's)."""

    @extend_schema(
        operation_id="usage",
        parameters=[UsageQuerySerializer],
        responses={200: UsageReportSerializer},
    )
    async def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        caller = caller_of(request)
        if query.validated_data.get("key") and not caller.staff:
            raise PermissionDenied("Only staff may ask for another key's usage.")
        report = await sync_to_async(services.usage_report)(caller, **query.validated_data)
        return Response(UsageReportSerializer(report).data)
