from __future__ import annotations

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from inference import errors, views

app_name = "inference"

router = SimpleRouter(trailing_slash=True)
router.register("requests", views.RequestViewSet, basename="requests")
router.register("documents", views.DocumentViewSet, basename="documents")

urlpatterns = [
    path("infer", views.InferView.as_view(), name="infer"),
    path("infer/batch", views.BatchInferView.as_view(), name="infer-batch"),
    path("status/<str:request_id>", views.StatusView.as_view(), name="status"),
    path("result/<str:request_id>", views.ResultView.as_view(), name="result"),
    path("sessions/", views.SessionListView.as_view(), name="sessions"),
    path("sessions/<str:session_id>", views.SessionView.as_view(), name="session"),
    path(
        "sessions/<str:session_id>/export",
        views.SessionExportView.as_view(),
        name="session-export",
    ),
    path("config", views.ConfigView.as_view(), name="config"),
    path("usage", views.UsageView.as_view(), name="usage"),
    path("cache", views.CacheView.as_view(), name="cache"),
    path("cache/stats", views.CacheStatsView.as_view(), name="cache-stats"),
    path("cache/<str:cache_key>", views.CacheEntryView.as_view(), name="cache-entry"),
    *router.urls,
    # Anything else under /api/v1/ is a JSON 404, whatever DEBUG says.
    re_path(r"^.*$", errors.json_404),
]
