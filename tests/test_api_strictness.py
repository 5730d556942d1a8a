"""What the fuzzer (scripts/fuzz_api.py) found, pinned: inputs the schema does
not allow are a 400 in the error shape, never coerced, ignored or a 500."""

from __future__ import annotations

import pytest
from django.test import Client

from inference.models import Document, InferenceRequest

pytestmark = pytest.mark.django_db


def post_infer(client: Client, **fields):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/infer", {"prompt": "x", **fields}, "application/json")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_p", False),
        ("temperature", "0.5"),
        ("max_tokens", 2.5),
        ("max_tokens", True),
        ("stream", "yes"),
        ("max_tokens", 10**9),
        ("deadline_seconds", 5.2e13),  # overflowed a timedelta: was a 500
        ("rag", {"enabled": True, "unknown": 1}),
        ("backend", "no-such-backend"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_a_400(client: Client, field: str, value) -> None:  # type: ignore[no-untyped-def]
    response = post_infer(client, **{field: value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field


def test_document_fields_must_be_strings(client: Client) -> None:
    body = {"title": "t", "text": 0}
    response = client.post("/api/v1/documents/", body, "application/json")
    assert response.status_code == 400 and Document.objects.count() == 0


@pytest.mark.parametrize("query", ["page_size=0", "page_size=abc", "page_size=501", "cursor=junk"])
def test_bad_paging_is_a_400_not_a_silent_default(client: Client, query: str) -> None:
    response = client.get(f"/api/v1/requests/?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == query.split("=")[0]


def test_a_post_to_no_route_is_a_json_404_even_with_a_session_cookie(client: Client) -> None:
    client.cookies["sessionid"] = "anything"
    response = client.post("/api/v1/requests/0.5/cancel/")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"


def test_a_csrf_failure_speaks_json(settings) -> None:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    response = client.post(f"/{settings.ADMIN_URL}login/", {"username": "x"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


@pytest.mark.django_db(transaction=True)
async def test_the_stream_answers_only_get() -> None:
    from channels.routing import URLRouter
    from channels.testing import ApplicationCommunicator

    from inference.routing import http_urlpatterns

    scope = {
        "type": "http",
        "method": "TRACE",
        "path": "/api/v1/stream/8d9f3b1e-0000-4000-8000-000000000000",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
    }
    app = ApplicationCommunicator(URLRouter(http_urlpatterns), scope)
    await app.send_input({"type": "http.request", "body": b""})
    start = await app.receive_output(5)
    assert start["status"] == 405 and (b"allow", b"GET") in start["headers"]


# --- unknown fields and prompts that cannot fit -----------------------------------------


@pytest.mark.parametrize(
    ("field", "hint"),
    [("max_token", "Did you mean 'max_tokens'?"), ("model", "Pick a model by its backend")],
)
def test_an_unknown_body_field_is_a_400_naming_it(client: Client, field: str, hint: str) -> None:
    response = post_infer(client, **{field: 5})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (field, "unknown_field")
    assert f"Unknown field {field!r}." in error["message"] and hint in error["message"]


@pytest.mark.parametrize("url", ["/api/v1/requests/", "/api/v1/documents/", "/api/v1/usage"])
def test_an_unknown_query_parameter_on_a_list_route_is_a_400(client: Client, url: str) -> None:
    response = client.get(url, {"stauts": "failed"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("stauts", "unknown_query_parameter")


def test_known_query_parameters_still_filter(client: Client) -> None:
    assert client.get("/api/v1/requests/", {"status": "failed", "page_size": 5}).status_code == 200
    assert client.get("/api/v1/usage", {"group_by": "day"}).status_code == 200


def test_a_prompt_that_cannot_fit_its_models_context_is_a_400_with_both_numbers(
    client: Client,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.ORCHESTRATOR_BACKENDS = {
        **settings.ORCHESTRATOR_BACKENDS,
        "local": {
            "class": "pipeline.backends.llama_cpp.LlamaCppBackend",
            "options": {"n_ctx": 2048},
        },
        "small": {
            "class": "pipeline.backends.echo.EchoBackend",
            "options": {},
            "context_tokens": 64,
        },
    }
    too_long = "word " * 1600  # 8,000 characters: about 2,000 tokens
    response = post_infer(client, prompt=too_long, backend="local", max_tokens=256)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")
    assert "about 2000 tokens and max_tokens is 256" in error["message"]
    assert "2048-token context of 'local'" in error["message"]
    assert post_infer(client, prompt=too_long, backend="local", max_tokens=40).status_code == 202
    assert post_infer(client, prompt="x" * 200, backend="small", max_tokens=20).status_code == 400
    assert post_infer(client, prompt=too_long, backend="echo").status_code == 202  # not known
    assert InferenceRequest.objects.count() == 2


async def test_a_websocket_submit_with_an_unknown_field_is_refused_naming_it() -> None:
    from tests.test_websocket import connected

    socket = await connected()
    await socket.send_json_to({"prompt": "hi", "max_token": 5})
    message = await socket.receive_json_from(timeout=5)
    assert message["type"] == "error" and message["error"]["param"] == "max_token"
    assert message["error"]["code"] == "unknown_field"
    await socket.disconnect()


@pytest.mark.parametrize(
    "url", ["/api/v1/sessions/?page_size=", "/api/v1/sessions/s/export?format="]
)
def test_an_empty_query_parameter_is_a_400_not_the_default(client: Client, url: str) -> None:
    InferenceRequest.objects.create(session_id="s", prompt="p", backend="echo")
    response = client.get(url)
    assert response.status_code == 400 and response.json()["error"]["code"] == "blank"
