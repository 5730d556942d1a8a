"""Conversations: /api/v1/sessions/ (list), PATCH (rename), DELETE, /export."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from inference.models import InferenceRequest, SessionTitle, Status
from tests.keys import bearer, make_key, operator

pytestmark = pytest.mark.django_db

T0 = timezone.now() - timedelta(hours=1)


@pytest.fixture(autouse=True)
def keys_required(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = True


class Caller:
    """A client with its own API key."""

    def __init__(self, name: str) -> None:
        key, secret = make_key(name)
        self.prefix = key.prefix
        self.client = Client(headers=bearer(secret))

    def turn(self, session_id: str, prompt: str, minute: int, **fields: Any) -> InferenceRequest:
        return InferenceRequest.objects.create(
            api_key_id=self.prefix,
            session_id=session_id,
            prompt=prompt,
            backend="echo",
            created_at=T0 + timedelta(minutes=minute),
            **{"status": Status.COMPLETED, "result": prompt.upper(), **fields},
        )

    def get(self, path: str, **query: Any) -> Any:
        return self.client.get(path, query)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch(path, json.dumps(body), content_type="application/json")

    def delete(self, path: str) -> Any:
        return self.client.delete(path)


@pytest.fixture
def alice() -> Caller:
    return Caller("alice")


@pytest.fixture
def bob() -> Caller:
    return Caller("bob")


def listed(caller: Caller, **query: Any) -> list[dict[str, Any]]:
    response = caller.get("/api/v1/sessions/", **query)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


# --- listing ----------------------------------------------------------------------------


def test_the_list_is_the_callers_conversations_newest_activity_first(alice: Caller) -> None:
    alice.turn("old", "An old question", 0)
    alice.turn("new", "A newer question", 5)
    alice.turn("old", "A follow-up that makes it the latest", 9)
    sessions = listed(alice)
    assert [s["session_id"] for s in sessions] == ["old", "new"]
    old = sessions[0]
    assert (old["title"], old["turns"]) == ("An old question", 2)
    assert datetime.fromisoformat(old["last_activity"]) == T0 + timedelta(minutes=9)
    assert datetime.fromisoformat(old["started_at"]) == T0


def test_a_long_first_prompt_is_cut_to_about_60_characters_on_one_line(alice: Caller) -> None:
    alice.turn("s", "word " * 40 + "\n\nand more", 0)
    title = listed(alice)[0]["title"]
    assert len(title) <= 60 and title.endswith("…") and "\n" not in title
    assert title.startswith("word word")


def test_keys_see_only_their_own_conversations_even_under_the_same_session_id(
    alice: Caller, bob: Caller
) -> None:
    alice.turn("shared-name", "alice's", 0)
    alice.turn("alice-only", "alice again", 1)
    bob.turn("shared-name", "bob's", 2)
    assert [(s["session_id"], s["title"], s["turns"]) for s in listed(alice)] == [
        ("alice-only", "alice again", 1),
        ("shared-name", "alice's", 1),
    ]
    assert [(s["session_id"], s["title"]) for s in listed(bob)] == [("shared-name", "bob's")]


def test_another_keys_conversation_is_a_404_on_every_route(alice: Caller, bob: Caller) -> None:
    alice.turn("private", "secret plans", 0)
    path = "/api/v1/sessions/private"
    for response in (
        bob.get(path),
        bob.patch(path, {"title": "mine now"}),
        bob.get(f"{path}/export"),
        bob.get(f"{path}/export", format="markdown"),
        bob.delete(path),
    ):
        assert response.status_code == 404
        assert error_of(response)["type"] == "not_found_error"
    assert InferenceRequest.objects.filter(session_id="private").count() == 1
    assert not SessionTitle.objects.exists()
    assert listed(alice)[0]["title"] == "secret plans"


def test_the_list_pages_with_a_cursor(alice: Caller) -> None:
    for minute in range(5):
        alice.turn(f"s{minute}", f"prompt {minute}", minute)
    alice.turn("t", "same time as s4", 4)  # a tie on last_activity: session_id decides
    seen: list[str] = []
    response = alice.get("/api/v1/sessions/", page_size=2)
    while True:
        body = response.json()
        assert len(body["results"]) <= 2
        seen += [s["session_id"] for s in body["results"]]
        if body["next"] is None:
            break
        response = alice.client.get(body["next"])
    assert seen == ["s4", "t", "s3", "s2", "s1", "s0"]


def test_list_query_parameters_are_validated(alice: Caller) -> None:
    for query, param in (
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "lots"}, "page_size"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limt": "5"}, "limt"),
    ):
        response = alice.get("/api/v1/sessions/", **query)
        assert response.status_code == 400, query
        assert error_of(response)["param"] == param


def test_staff_list_and_change_only_their_own_conversations(alice: Caller) -> None:
    """Conversations are a person's own, staff's too: a sidebar listing everyone's
    would merge two principals' sessions of the same name, and its delete would
    remove both (staff inspect other people's requests in the admin)."""
    staff = operator()
    alice.turn("shared", "from alice", 0)
    InferenceRequest.objects.create(
        session_id="shared", prompt="from staff", backend="echo", owner=staff
    )
    client = Client()
    client.force_login(staff)
    sessions = client.get("/api/v1/sessions/").json()["results"]
    assert [(s["session_id"], s["turns"]) for s in sessions] == [("shared", 1)]
    assert client.delete("/api/v1/sessions/shared").status_code == 204
    assert [s["title"] for s in listed(alice)] == ["from alice"]  # alice's turn is untouched


def test_keys_are_required_for_the_list() -> None:
    response = Client().get("/api/v1/sessions/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "missing_api_key"


# --- rename ------------------------------------------------------------------------------


def test_a_rename_is_listed_and_shown_and_can_be_undone(alice: Caller) -> None:
    alice.turn("s", "the first prompt", 0)
    response = alice.patch("/api/v1/sessions/s", {"title": "  Trip planning  "})
    assert response.status_code == 200
    assert response.json()["title"] == "Trip planning"
    assert response.json()["turns"] == 1
    assert listed(alice)[0]["title"] == "Trip planning"
    assert alice.get("/api/v1/sessions/s").json()["title"] == "Trip planning"
    alice.patch("/api/v1/sessions/s", {"title": "Trip planning, v2"})
    assert SessionTitle.objects.get().title == "Trip planning, v2"
    assert alice.patch("/api/v1/sessions/s", {"title": ""}).json()["title"] == "the first prompt"
    assert not SessionTitle.objects.exists()


def test_titles_are_per_owner(alice: Caller, bob: Caller) -> None:
    alice.turn("same", "alice's", 0)
    bob.turn("same", "bob's", 1)
    alice.patch("/api/v1/sessions/same", {"title": "Alice named it"})
    bob.patch("/api/v1/sessions/same", {"title": "Bob named it"})
    assert listed(alice)[0]["title"] == "Alice named it"
    assert listed(bob)[0]["title"] == "Bob named it"
    assert SessionTitle.objects.count() == 2


def test_a_staff_rename_belongs_to_that_staff_user() -> None:
    staff = operator()
    InferenceRequest.objects.create(
        session_id="s", prompt="staff prompt", backend="echo", owner=staff
    )
    client = Client()
    client.force_login(staff)
    response = client.patch(
        "/api/v1/sessions/s", json.dumps({"title": "Ops"}), content_type="application/json"
    )
    assert response.status_code == 200
    title = SessionTitle.objects.get()
    assert (title.api_key_id, title.user_id, title.title) == (None, staff.pk, "Ops")
    other = Client()
    other.force_login(operator("another"))
    assert other.get("/api/v1/sessions/").json()["results"] == []  # not theirs


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"title": 42}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": "ok", "colour": "red"}, "colour"),
        ([], ""),
    ],
)
def test_a_rename_body_is_validated(alice: Caller, body: Any, param: str) -> None:
    alice.turn("s", "p", 0)
    response = alice.patch("/api/v1/sessions/s", body)
    assert response.status_code == 400
    if param:
        assert error_of(response)["param"] == param
    assert not SessionTitle.objects.exists()


def test_a_patch_without_a_title_changes_nothing(alice: Caller) -> None:
    """PATCH semantics (and what the schema says): absent fields stay as they are."""
    alice.turn("s", "the first prompt", 0)
    assert alice.patch("/api/v1/sessions/s", {"title": "Named"}).status_code == 200
    response = alice.patch("/api/v1/sessions/s", {})
    assert response.status_code == 200 and response.json()["title"] == "Named"


def test_an_unknown_session_cannot_be_renamed(alice: Caller) -> None:
    response = alice.patch("/api/v1/sessions/nope", {"title": "x"})
    assert response.status_code == 404
    assert not SessionTitle.objects.exists()


# --- delete --------------------------------------------------------------------------------


def test_deleting_a_conversation_removes_its_turns_and_title_only(
    alice: Caller, bob: Caller
) -> None:
    alice.turn("gone", "bye", 0)
    alice.turn("kept", "stay", 1)
    bob.turn("gone", "bob keeps his", 2)
    alice.patch("/api/v1/sessions/gone", {"title": "Doomed"})
    bob.patch("/api/v1/sessions/gone", {"title": "Bob's"})
    assert alice.delete("/api/v1/sessions/gone").status_code == 204
    assert [s["session_id"] for s in listed(alice)] == ["kept"]
    assert alice.get("/api/v1/sessions/gone").status_code == 404
    assert [(s["session_id"], s["title"]) for s in listed(bob)] == [("gone", "Bob's")]
    assert list(SessionTitle.objects.values_list("title", flat=True)) == ["Bob's"]


# --- the turns carry what the chat page shows -------------------------------------------


def test_session_turns_carry_finish_reason_errors_and_passages(alice: Caller) -> None:
    passages = [{"document_id": 1, "title": "Doc", "text": "t", "score": 1.5}]
    alice.turn("s", "cut", 0, finish_reason="length", passages=passages, params={"rag": {}})
    alice.turn(
        "s", "broke", 1, status=Status.FAILED, result=None, error="it broke",
        error_code="backend_error", finish_reason="error", metadata={"regenerate_of": "x"},
    )  # fmt: skip
    first, second = alice.get("/api/v1/sessions/s").json()["turns"]
    assert (first["finish_reason"], first["passages"], first["params"]) == (
        "length", passages, {"rag": {}}
    )  # fmt: skip
    assert (second["error"], second["error_code"], second["status"]) == (
        "it broke", "backend_error", "failed"
    )  # fmt: skip
    assert second["metadata"] == {"regenerate_of": "x"}


# --- export ----------------------------------------------------------------------------------


def test_export_json_is_an_attachment_with_the_turns(alice: Caller) -> None:
    alice.turn("s", "What is 2+2?", 0, finish_reason="stop", finished_at=T0)
    alice.turn("s", "And 3+3?", 1, finish_reason="length")
    alice.patch("/api/v1/sessions/s", {"title": "Sums & más"})
    response = alice.get("/api/v1/sessions/s/export")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="sums-mas-s.json"'
    body = response.json()
    assert (body["session_id"], body["title"]) == ("s", "Sums & más")
    assert [(t["prompt"], t["result"], t["status"], t["finish_reason"]) for t in body["turns"]] == [
        ("What is 2+2?", "WHAT IS 2+2?", "completed", "stop"),
        ("And 3+3?", "AND 3+3?", "completed", "length"),
    ]
    turn = body["turns"][0]
    assert {"created_at", "started_at", "finished_at", "request_id"} <= set(turn)
    assert datetime.fromisoformat(turn["finished_at"]) == T0
    explicit = alice.get("/api/v1/sessions/s/export", format="json").json()
    assert explicit["turns"] == body["turns"]


@pytest.mark.parametrize("fmt", ["markdown", "md"])
def test_export_markdown_is_a_readable_transcript(alice: Caller, fmt: str) -> None:
    alice.turn("chat-1", "Explain **tests**", 0)
    alice.turn(
        "chat-1", "Now fail", 1, status=Status.FAILED, result=None, error="upstream down",
        error_code="backend_error",
    )  # fmt: skip
    response = alice.get("/api/v1/sessions/chat-1/export", format=fmt)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="explain-tests-chat-1.md"'
    )  # fmt: skip
    text = response.content.decode()
    assert text.startswith("# Explain **tests**\n")
    assert "**You**" in text and "**Assistant** (echo) · completed" in text
    assert "\nExplain **tests**\n" in text and "\nEXPLAIN **TESTS**\n" in text
    assert "> Error (backend_error): upstream down" in text


def test_export_query_is_validated_and_errors_stay_json(alice: Caller) -> None:
    alice.turn("s", "p", 0)
    for query, param in (({"format": "xml"}, "format"), ({"fromat": "md"}, "fromat")):
        response = alice.get("/api/v1/sessions/s/export", **query)
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        assert error_of(response)["param"] == param
    missing = alice.get("/api/v1/sessions/nope/export", format="markdown")
    assert missing.status_code == 404 and error_of(missing)["code"]


def test_an_anonymous_developer_owns_unkeyed_conversations(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    InferenceRequest.objects.create(session_id="dev", prompt="hi", backend="echo")
    client = Client()
    assert [s["session_id"] for s in client.get("/api/v1/sessions/").json()["results"]] == ["dev"]
    renamed = client.patch(
        "/api/v1/sessions/dev", json.dumps({"title": "Dev"}), content_type="application/json"
    )
    assert renamed.json()["title"] == "Dev"
    title = SessionTitle.objects.get()
    assert (title.api_key_id, title.user_id) == (None, None)
    assert User.objects.count() == 0


def test_the_chat_page_gives_a_staff_session_the_csrf_token_its_changes_need() -> None:
    """A session cookie alone may not rename or delete: the page hands its script
    the token (data-csrf) that PATCH and DELETE send as X-CSRFToken."""
    staff = operator()
    InferenceRequest.objects.create(session_id="s", prompt="p", backend="echo", owner=staff)
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    page = client.get("/").content.decode()
    token = re.search(r'data-csrf="([^"]+)"', page)
    assert token, "the chat page carries no CSRF token"
    path, body = "/api/v1/sessions/s", json.dumps({"title": "Staff"})
    refused = client.patch(path, body, content_type="application/json")
    assert refused.status_code == 403
    renamed = client.patch(
        path, body, content_type="application/json", headers={"X-CSRFToken": token[1]}
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Staff"
    deleted = client.delete(path, headers={"X-CSRFToken": token[1]})
    assert deleted.status_code == 204


def test_members_conversations_are_their_own(alice: Caller) -> None:
    """A signed-in account without staff rights lists, renames and exports its own
    conversations; another member's (or a key's) are 404s."""
    carol, dave = Client(), Client()
    carol.force_login(User.objects.create(username="carol"))
    dave.force_login(User.objects.create(username="dave"))
    alice.turn("shared-name", "alice's turn", 1)
    mine = carol.post(
        "/api/v1/infer", {"prompt": "carol's", "session_id": "shared-name"}, "application/json"
    )
    assert mine.status_code == 202
    carols = carol.get("/api/v1/sessions/").json()["results"]
    assert [(s["session_id"], s["turns"]) for s in carols] == [("shared-name", 1)]
    assert dave.get("/api/v1/sessions/").json()["results"] == []
    assert dave.get("/api/v1/sessions/shared-name").status_code == 404
    renamed = carol.patch(
        "/api/v1/sessions/shared-name", json.dumps({"title": "Mine"}), "application/json"
    )
    assert renamed.status_code == 200
    assert [s["title"] for s in listed(alice)] != ["Mine"]  # the key's own title is untouched
    export = carol.get("/api/v1/sessions/shared-name/export", {"format": "json"}).json()
    assert [turn["prompt"] for turn in export["turns"]] == ["carol's"]
