"""GET /health (readiness: database + channel layer) and /health/live."""

from __future__ import annotations

import pytest
from django.db import DatabaseError
from django.test import Client

pytestmark = pytest.mark.django_db


def test_health_reports_healthy_with_each_check(client: Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    assert body["worker_mode"] == "embedded"


def test_health_is_503_when_the_database_fails(client: Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken() -> str:
        raise DatabaseError("connection refused")

    monkeypatch.setattr("inference.views._check_database", broken)
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"].startswith("error")


def test_liveness_answers_without_checking_dependencies(client: Client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("inference.views._check_database", None)
    assert client.get("/health/live").json()["status"] == "healthy"
