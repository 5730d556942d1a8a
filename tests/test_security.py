"""Security findings of the independent probe that need no server process: staff
act through Django's model permissions, a data error is never an outage, one bad
stored row never breaks a listing, a key's priority ceiling, the admin's retry
keeps the owner, production checks. (Hostile clients: test_hostile_clients.py.)"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import DataError, IntegrityError, OperationalError
from django.test import Client

from inference.admission import Refusal
from inference.models import Document, InferenceRequest
from tests.conftest import submit
from tests.keys import bearer, make_key

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def keys_required(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = True


def staff_client(*perms: str) -> Client:
    user = User.objects.create(username=f"staff-{len(perms)}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client = Client()
    client.force_login(user)
    return client


def post_json(client: Client, path: str, body: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(path, json.dumps(body), content_type="application/json", headers=headers)


# --- staff powers are the admin's ----------------------------------------------------------


def test_a_staff_account_without_permissions_gets_403_everywhere_the_admin_does() -> None:
    _, secret = make_key("tenant")
    theirs = post_json(
        Client(), "/api/v1/infer", {"prompt": "p", "session_id": "s"}, **bearer(secret)
    )
    rid = theirs.json()["request_id"]
    client = staff_client()
    assert client.get("/admin/inference/inferencerequest/").status_code == 403
    assert client.get("/api/v1/requests/").status_code == 403
    assert client.get(f"/api/v1/status/{rid}").status_code == 403
    assert client.get("/api/v1/sessions/s").status_code == 403
    assert client.delete("/api/v1/sessions/s").status_code == 403
    assert client.post(f"/api/v1/requests/{rid}/cancel/").status_code == 403
    assert post_json(client, "/api/v1/documents/", {"title": "t", "text": "x"}).status_code == 403
    assert post_json(client, "/api/v1/infer", {"prompt": "mine"}).status_code == 403
    assert InferenceRequest.objects.filter(session_id="s").exists()
    assert not Document.objects.exists()


def test_staff_get_exactly_the_model_permissions_they_hold() -> None:
    _, secret = make_key("tenant")
    post_json(Client(), "/api/v1/infer", {"prompt": "p", "session_id": "s"}, **bearer(secret))
    viewer = staff_client("view_inferencerequest", "view_document")
    assert viewer.get("/api/v1/requests/").json()["results"][0]["session_id"] == "s"
    assert viewer.get("/api/v1/documents/").status_code == 200
    assert viewer.delete("/api/v1/sessions/s").status_code == 403
    assert post_json(viewer, "/api/v1/documents/", {"title": "t", "text": "x"}).status_code == 403
    editor = staff_client("view_inferencerequest", "delete_inferencerequest", "add_document")
    assert post_json(editor, "/api/v1/documents/", {"title": "t", "text": "x"}).status_code == 201
    # Conversations are a person's own: the tenant's is not the editor's to delete...
    assert editor.delete("/api/v1/sessions/s").status_code == 404
    mine = User.objects.get(username="staff-3")
    InferenceRequest.objects.create(session_id="mine", prompt="p", backend="echo", owner=mine)
    assert editor.delete("/api/v1/sessions/mine").status_code == 204  # ...its own is


def test_a_superuser_may_do_everything(admin_client: Client) -> None:
    submitted = post_json(admin_client, "/api/v1/infer", {"prompt": "hello"})
    assert submitted.status_code == 202
    rid = submitted.json()["request_id"]
    assert admin_client.post(f"/api/v1/requests/{rid}/cancel/").status_code == 200


# --- data errors, stored rows --------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (DataError("invalid byte sequence"), 400, "invalid_data"),
        (IntegrityError("violates foreign key"), 409, "conflict"),
        (OperationalError("connection refused"), 503, "service_unavailable"),
    ],
)
def test_only_an_unreachable_database_is_an_outage(
    error: Exception, status: int, code: str
) -> None:
    refusal = Refusal.from_database(error)  # type: ignore[arg-type]
    assert (refusal.status, refusal.code) == (status, code)
    assert ("Retry-After" in refusal.headers()) == (status == 503)


def test_a_row_stored_with_a_lone_surrogate_breaks_no_listing(admin_client: Client) -> None:
    bad = submit("fine prompt")
    InferenceRequest.objects.filter(pk=bad.pk).update(metadata={"x": "\ud800"})
    listing = admin_client.get("/api/v1/requests/")
    assert listing.status_code == 200
    assert listing.json()["results"][0]["metadata"] == {"x": "\ud800"}
    assert admin_client.get(f"/api/v1/status/{bad.pk}").status_code == 200
    assert admin_client.get("/admin/inference/inferencerequest/").status_code == 200
    assert (
        admin_client.get(f"/admin/inference/inferencerequest/{bad.pk}/change/").status_code == 200
    )


# --- keys ----------------------------------------------------------------------------------


def test_a_key_asking_above_its_priority_ceiling_runs_at_the_ceiling() -> None:
    _, capped = make_key("capped", max_priority=3)
    _, free = make_key("free")
    body = {"prompt": "urgent", "priority": "high"}
    assert post_json(Client(), "/api/v1/infer", body, **bearer(capped)).json()["priority"] == 3
    assert post_json(Client(), "/api/v1/infer", body, **bearer(free)).json()["priority"] == 9


def test_create_api_key_sets_a_priority_ceiling() -> None:
    call_command(
        "create_api_key", "bulk", "--max-priority", "1", stdout=StringIO(), stderr=StringIO()
    )
    from inference.models import ApiKey

    assert ApiKey.objects.get(name="bulk").max_priority == 1


def test_the_admin_retry_keeps_the_owner(admin_client: Client) -> None:
    key, secret = make_key("owner")
    original = post_json(Client(), "/api/v1/infer", {"prompt": "again"}, **bearer(secret)).json()
    InferenceRequest.objects.filter(pk=original["request_id"]).update(status="failed")
    admin_client.post(
        "/admin/inference/inferencerequest/",
        {"action": "retry_selected", "_selected_action": [original["request_id"]]},
    )
    retried = InferenceRequest.objects.exclude(pk=original["request_id"]).get()
    assert (retried.api_key_id, retried.transport) == (key.prefix, "admin")
    visible = Client().get(f"/api/v1/status/{retried.pk}", headers=bearer(secret))
    assert visible.status_code == 200


# --- production checks ---------------------------------------------------------------------


def deploy_check_ids(settings, **overrides) -> str:  # type: ignore[no-untyped-def]
    for name, value in overrides.items():
        setattr(settings, name, value)
    out = StringIO()
    try:
        call_command("check", "--deploy", "--fail-level", "CRITICAL", stdout=out, stderr=out)
    except SystemExit:
        pass
    return out.getvalue()


def test_check_deploy_warns_that_metrics_are_open_without_a_token(settings) -> None:  # type: ignore[no-untyped-def]
    assert "inference.W007" in deploy_check_ids(settings, ORCHESTRATOR_METRICS_TOKEN="")
    assert "inference.W007" not in deploy_check_ids(settings, ORCHESTRATOR_METRICS_TOKEN="t0k3n")


def test_check_deploy_refuses_trusting_every_proxy(settings) -> None:  # type: ignore[no-untyped-def]
    assert "inference.E006" in deploy_check_ids(settings, ORCHESTRATOR_TRUSTED_PROXIES=["*"])
