"""HTTP-side metrics: an ASGI wrapper (no sync middleware on the async path) and
the ``/metrics`` endpoint, which adds the queue depth read from the database."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from inference import metrics
from inference.errors import error_body
from inference.models import InferenceRequest, Status

# Route labels: a fixed set, never raw paths or ids.
ROUTES = (
    "/api/v1/infer",
    "/api/v1/status",
    "/api/v1/result",
    "/api/v1/requests",
    "/api/v1/stream",
    "/api/v1/documents",
    "/api/v1/sessions",
    "/v1/chat/completions",
    "/v1/models",
    "/api/schema",
    "/api/docs",
    "/health",
    "/metrics",
    "/admin",
    "/static",
)


def route_of(path: str) -> str:
    return next((route for route in ROUTES if path.startswith(route)), "other")


class HttpMetrics:
    """Counts HTTP responses by route, method and status; times them to the first byte."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.monotonic()
        route = route_of(scope["path"])

        async def observed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = str(message["status"])
                metrics.HTTP_REQUESTS.labels(route, scope["method"], status).inc()
                metrics.HTTP_DURATION.labels(route).observe(time.monotonic() - began)
            await send(message)

        await self.app(scope, receive, observed_send)


class QueueDepth:
    """``orchestrator_queue_depth{status, priority}`` and
    ``orchestrator_queue_oldest_age_seconds{priority}`` read from the database at
    scrape: how much waits, and for how long (the starvation alarm, and a signal
    to scale workers on)."""

    def collect(self) -> Any:
        yield self.depth()
        yield self.oldest()

    def oldest(self) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(
            "orchestrator_queue_oldest_age_seconds",
            "Seconds the oldest pending request of a priority has waited",
            labels=["priority"],
        )
        now = timezone.now()
        rows = (
            InferenceRequest.objects.filter(status=Status.PENDING)
            .values_list("priority")
            .annotate(oldest=Min("created_at"))
        )
        ages = {str(priority): (now - oldest).total_seconds() for priority, oldest in rows}
        gauge.add_metric(["all"], max(ages.values(), default=0))  # 0: nothing waits
        for priority, age in ages.items():
            gauge.add_metric([priority], age)
        return gauge

    def depth(self) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(
            "orchestrator_queue_depth", "Requests waiting or running", labels=["status", "priority"]
        )
        rows = (
            InferenceRequest.objects.filter(status__in=[Status.PENDING, Status.PROCESSING])
            .values("status", "priority")
            .annotate(n=Count("id"))
        )
        for status in (Status.PENDING, Status.PROCESSING):
            gauge.add_metric([status, "all"], 0)  # present even when empty
        for row in rows:
            gauge.add_metric([row["status"], str(row["priority"])], row["n"])
        return gauge


queue_registry = CollectorRegistry(auto_describe=False)
queue_registry.register(QueueDepth())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; behind ``ORCHESTRATOR_METRICS_TOKEN`` when one is set
    (API keys do not apply: a scraper is not a client)."""
    token = settings.ORCHESTRATOR_METRICS_TOKEN
    if token and not constant_time_compare(
        request.headers.get("Authorization", ""), f"Bearer {token}"
    ):
        error = error_body("Send 'Authorization: Bearer <metrics token>'.", 401, "unauthorized")
        challenge = {"WWW-Authenticate": 'Bearer realm="metrics"'}
        return JsonResponse(error, status=401, headers=challenge)
    body = generate_latest(REGISTRY) + generate_latest(queue_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
