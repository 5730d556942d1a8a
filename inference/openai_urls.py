"""The OpenAI-compatible ``/v1`` routes served by Django (the POST is a consumer:
``inference.routing``)."""

from __future__ import annotations

from django.urls import path, re_path

from inference import errors, openai_views

app_name = "openai"

urlpatterns = [
    path("models", openai_views.ModelListView.as_view(), name="models"),
    path("models/<path:model_id>", openai_views.ModelView.as_view(), name="model"),
    path(
        "chat/completions/<str:completion_id>",
        openai_views.CompletionView.as_view(),
        name="completion",
    ),
    # Every other OpenAI route (embeddings, responses, ...): a 404 in its envelope.
    re_path(r"^.*$", errors.json_404),
]
