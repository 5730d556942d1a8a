"""POST /api/v1/infer: the submit contract, validation and the error shape."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client

from inference.models import InferenceRequest

pytestmark = pytest.mark.django_db

URL = "/api/v1/infer"


def post(client: Client, body: object, **headers: str):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", headers=headers)


def assert_error_shape(response, status: int, param: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_submit_returns_202_with_the_seed_fields_and_a_location(client: Client) -> None:
    response = post(client, {"prompt": "What is Rust?"})
    assert response.status_code == 202
    body = response.json()
    assert {"request_id", "session_id", "status", "result", "error"} <= set(body)
    assert body["status"] == "pending"
    assert body["result"] is None and body["error"] is None
    assert response["Location"] == f"/api/v1/status/{body['request_id']}"
    uuid.UUID(body["session_id"])  # a fresh session when none was given


def test_submit_commits_the_request_with_its_fields(client: Client) -> None:
    body = post(
        client,
        {
            "prompt": "Hi",
            "session_id": "my-session",
            "metadata": {"user": "alice"},
            "priority": "high",
            "max_tokens": 12,
            "temperature": 0.1,
            "stop": ["\n"],
        },
    ).json()
    row = InferenceRequest.objects.get(pk=body["request_id"])
    assert (row.prompt, row.session_id, row.metadata) == ("Hi", "my-session", {"user": "alice"})
    assert row.priority == 9
    assert row.params == {"max_tokens": 12, "temperature": 0.1, "stop": ["\n"]}
    assert row.backend == "echo"
    assert row.deadline_at > row.created_at
    assert body["metadata"] == {"user": "alice"}


def test_a_priority_inside_metadata_is_honoured_as_in_the_seed(client: Client) -> None:
    body = post(client, {"prompt": "Hi", "metadata": {"user": "alice", "priority": "high"}}).json()
    assert body["priority"] == 9
    assert body["metadata"]["priority"] == "high"


def test_the_same_idempotency_key_returns_the_first_request(client: Client) -> None:
    first = post(client, {"prompt": "once"}, **{"Idempotency-Key": "k-1"})
    second = post(client, {"prompt": "once"}, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["request_id"] == second.json()["request_id"]
    assert InferenceRequest.objects.count() == 1


def test_the_same_idempotency_key_with_another_request_is_a_422(client: Client) -> None:
    """The IETF draft's rule: answering with the first request would hide a client bug."""
    first = post(client, {"prompt": "once", "max_tokens": 5}, **{"Idempotency-Key": "k-2"})
    for changed in ({"prompt": "twice", "max_tokens": 5}, {"prompt": "once", "max_tokens": 6}):
        refused = post(client, changed, **{"Idempotency-Key": "k-2"})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "idempotency_key_reused"
    again = post(client, {"max_tokens": 5, "prompt": "once"}, **{"Idempotency-Key": "k-2"})
    assert again.status_code == 200 and again.json()["request_id"] == first.json()["request_id"]
    assert InferenceRequest.objects.count() == 1


def test_an_unknown_backend_is_a_400_listing_the_valid_ones(client: Client) -> None:
    error = assert_error_shape(post(client, {"prompt": "x", "backend": "gpt-9"}), 400, "backend")
    assert "echo" in error["message"]


BAD_BODIES = [
    pytest.param({}, "prompt", id="missing-prompt"),
    pytest.param({"prompt": ""}, "prompt", id="empty-prompt"),
    pytest.param({"prompt": "   "}, "prompt", id="blank-prompt"),
    pytest.param({"prompt": 42}, "prompt", id="prompt-not-a-string"),
    pytest.param({"prompt": ["a"]}, "prompt", id="prompt-a-list"),
    pytest.param({"prompt": "x", "metadata": "no"}, "metadata", id="metadata-not-an-object"),
    pytest.param({"prompt": "x", "stream": "maybe"}, "stream", id="stream-not-a-bool"),
    pytest.param({"prompt": "x", "priority": 99}, "priority", id="priority-out-of-range"),
    pytest.param({"prompt": "x", "max_tokens": 0}, "max_tokens", id="max-tokens-zero"),
    pytest.param({"prompt": "x", "max_tokens": 10**6}, "max_tokens", id="max-tokens-over-cap"),
    pytest.param({"prompt": "x", "temperature": 5}, "temperature", id="temperature-too-hot"),
    pytest.param({"prompt": "x", "stop": "END"}, "stop", id="stop-not-a-list"),
    pytest.param({"prompt": "x", "session_id": "s" * 200}, "session_id", id="session-too-long"),
    pytest.param(
        {"prompt": "x", "metadata": {"k": "v" * 20000}}, "metadata", id="metadata-too-big"
    ),
    pytest.param([1, 2], None, id="body-a-list"),
    pytest.param("null", None, id="body-null"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_invalid_input_is_a_400_in_the_error_shape(client: Client, body, param) -> None:  # type: ignore[no-untyped-def]
    error = assert_error_shape(post(client, body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert not InferenceRequest.objects.exists()


def test_malformed_json_is_a_400(client: Client) -> None:
    assert_error_shape(post(client, '{"prompt": "unterminated'), 400)


def test_an_empty_body_is_a_400(client: Client) -> None:
    assert_error_shape(post(client, ""), 400, "prompt")


def test_a_non_json_content_type_is_a_415(client: Client) -> None:
    response = client.post(URL, data="prompt=hi", content_type="text/plain")
    assert_error_shape(response, 415)


def test_a_2mb_body_is_a_413(client: Client) -> None:
    body = json.dumps({"prompt": "x" * (2 * 1024 * 1024)})
    error = assert_error_shape(post(client, body), 413)
    assert error["type"] == "request_too_large"
    assert not InferenceRequest.objects.exists()


def test_a_prompt_over_the_character_cap_is_a_400(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_MAX_PROMPT_CHARS = 10
    assert_error_shape(post(client, {"prompt": "x" * 11}), 400, "prompt")


def test_get_on_the_submit_route_is_a_405_in_the_error_shape(client: Client) -> None:
    assert_error_shape(client.get(URL), 405)


def test_an_unknown_api_route_is_a_json_404(client: Client) -> None:
    assert_error_shape(client.get("/api/v1/nothing-here"), 404)
