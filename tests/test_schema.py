"""OpenAPI schema and the self-hosted Swagger UI."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_schema_validates_without_warnings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert "/api/v1/infer" in out.read_text()


def test_every_route_is_documented_with_its_errors(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    infer = paths["/api/v1/infer"]["post"]
    assert set(infer["responses"]) >= {"200", "202", "400", "413", "503"}
    assert {"/api/v1/status/{request_id}", "/api/v1/result/{request_id}", "/health"} <= set(paths)
    assert "/api/v1/requests/{request_id}/cancel/" in paths
    assert "Error" in schema["components"]["schemas"]


def test_the_docs_page_loads_its_assets_from_our_static_files(client: Client) -> None:
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower()
    assert "/static/drf_spectacular_sidecar/" in page
