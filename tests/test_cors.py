"""CORS: permissive in development, an allow-list otherwise."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def preflight(client: Client, origin: str):  # type: ignore[no-untyped-def]
    return client.options(
        "/api/v1/infer",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_any_origin_is_allowed_in_development(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CORS_ALLOW_ALL_ORIGINS = True
    response = preflight(client, "http://localhost:5173")
    assert response["Access-Control-Allow-Origin"] in ("*", "http://localhost:5173")


def test_only_listed_origins_are_allowed_otherwise(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CORS_ALLOW_ALL_ORIGINS = False
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    allowed = preflight(client, "https://app.example.com")
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Access-Control-Allow-Origin" not in preflight(client, "https://evil.example")


def test_clients_can_read_location_and_retry_after(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CORS_ALLOW_ALL_ORIGINS = True
    response = client.post(
        "/api/v1/infer",
        {"prompt": "x"},
        content_type="application/json",
        headers={"Origin": "http://localhost:5173"},
    )
    exposed = response["Access-Control-Expose-Headers"].lower()
    assert "location" in exposed and "retry-after" in exposed
