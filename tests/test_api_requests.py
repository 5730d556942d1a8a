"""The /api/v1/requests/ viewset: list with filters and cursor pages, retrieve, cancel."""

from __future__ import annotations

import pytest
from django.test import Client

from inference.models import InferenceRequest
from tests.conftest import submit

pytestmark = pytest.mark.django_db


def test_list_is_newest_first_with_cursor_pages(client: Client) -> None:
    ids = [str(submit(f"p{i}").pk) for i in range(5)]
    page = client.get("/api/v1/requests/?page_size=2").json()
    assert [r["request_id"] for r in page["results"]] == ids[::-1][:2]
    assert page["next"] and page["previous"] is None
    second = client.get(page["next"]).json()
    assert [r["request_id"] for r in second["results"]] == ids[::-1][2:4]


def test_list_filters_by_status_and_session(client: Client) -> None:
    a = submit(session_id="alpha")
    submit(session_id="beta")
    InferenceRequest.objects.filter(pk=a.pk).update(status="completed")
    by_status = client.get("/api/v1/requests/?status=completed").json()["results"]
    by_session = client.get("/api/v1/requests/?session_id=beta").json()["results"]
    assert [r["request_id"] for r in by_status] == [str(a.pk)]
    assert [r["session_id"] for r in by_session] == ["beta"]


def test_an_invalid_status_filter_is_a_400(client: Client) -> None:
    response = client.get("/api/v1/requests/?status=sleeping")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "status"


def test_retrieve_and_unknown_id(client: Client) -> None:
    request = submit()
    assert client.get(f"/api/v1/requests/{request.pk}/").json()["request_id"] == str(request.pk)
    for bad in ["0b6f3c2e-3f7e-4a39-9a0b-1d1b5f0f9a11", "nope"]:
        response = client.get(f"/api/v1/requests/{bad}/")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_cancel_action_cancels_a_pending_request(client: Client) -> None:
    request = submit()
    response = client.post(f"/api/v1/requests/{request.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert InferenceRequest.objects.get(pk=request.pk).status == "cancelled"


def test_cancel_leaves_a_finished_request_as_it_was(client: Client) -> None:
    request = submit()
    InferenceRequest.objects.filter(pk=request.pk).update(status="completed", result="r")
    response = client.post(f"/api/v1/requests/{request.pk}/cancel/")
    assert response.json()["status"] == "completed"


def test_cancel_of_an_unknown_id_is_a_404(client: Client) -> None:
    response = client.post("/api/v1/requests/0b6f3c2e-3f7e-4a39-9a0b-1d1b5f0f9a11/cancel/")
    assert response.status_code == 404
