"""/api/v1/documents/ and /api/v1/sessions/<id>."""

from __future__ import annotations

import pytest
from django.test import Client

from inference.models import Document, InferenceRequest
from tests.conftest import submit

pytestmark = pytest.mark.django_db


def add(client: Client, **body: str):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/documents/", body, content_type="application/json")


def test_add_list_show_and_delete_a_document(client: Client) -> None:
    created = add(client, title="Zorblax", source="wiki/zorblax", text="Quenthar-9 is the capital.")
    assert created.status_code == 201
    body = created.json()
    assert (body["title"], body["source"], body["chunks"]) == ("Zorblax", "wiki/zorblax", 1)
    assert "text" not in body
    listed = client.get("/api/v1/documents/").json()["results"]
    assert [d["id"] for d in listed] == [body["id"]]
    shown = client.get(f"/api/v1/documents/{body['id']}/").json()
    assert shown["text"] == "Quenthar-9 is the capital."
    assert client.delete(f"/api/v1/documents/{body['id']}/").status_code == 204
    assert client.get(f"/api/v1/documents/{body['id']}/").status_code == 404


def test_adding_the_same_source_replaces_the_document(client: Client) -> None:
    add(client, title="v1", source="s", text="old")
    add(client, title="v2", source="s", text="new")
    assert list(Document.objects.values_list("title", "text")) == [("v2", "new")]


def test_a_document_without_a_source_gets_one(client: Client) -> None:
    body = add(client, title="t", text="some text").json()
    assert body["source"].startswith("api:")


@pytest.mark.parametrize("body", [{"title": "t"}, {"text": "x"}, {"title": "", "text": "x"}])
def test_an_incomplete_document_is_a_400(client: Client, body: dict) -> None:
    response = add(client, **body)
    assert response.status_code == 400 and response.json()["error"]["param"]


def test_a_session_lists_its_turns_oldest_first(client: Client) -> None:
    first = submit("one", session_id="s-1")
    second = submit("two", session_id="s-1")
    submit("elsewhere", session_id="s-2")
    InferenceRequest.objects.filter(pk=first.pk).update(status="completed", result="uno")
    body = client.get("/api/v1/sessions/s-1").json()
    assert body["session_id"] == "s-1"
    assert [(t["request_id"], t["prompt"], t["result"]) for t in body["turns"]] == [
        (str(first.pk), "one", "uno"),
        (str(second.pk), "two", None),
    ]


def test_deleting_a_session_cancels_and_removes_its_requests(client: Client) -> None:
    submit("one", session_id="gone")
    submit("keep", session_id="kept")
    assert client.delete("/api/v1/sessions/gone").status_code == 204
    assert list(InferenceRequest.objects.values_list("session_id", flat=True)) == ["kept"]
    assert client.get("/api/v1/sessions/gone").status_code == 404


def test_an_unknown_session_is_a_404(client: Client) -> None:
    assert client.get("/api/v1/sessions/nope").status_code == 404
    assert client.delete("/api/v1/sessions/nope").status_code == 404


def test_rag_options_are_validated(client: Client) -> None:
    ok = client.post(
        "/api/v1/infer",
        {"prompt": "x", "rag": {"top_k": 2, "documents": [1]}},
        content_type="application/json",
    )
    assert ok.status_code == 202 and ok.json()["params"]["rag"] == {"top_k": 2, "documents": [1]}
    for bad in ({"top_k": 99}, {"documents": "all"}, {"what": 1}, "yes"):
        response = client.post(
            "/api/v1/infer", {"prompt": "x", "rag": bad}, content_type="application/json"
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "rag"
