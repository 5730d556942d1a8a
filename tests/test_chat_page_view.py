"""The chat page's view: which backends it offers, and with which model."""

from __future__ import annotations

import pytest
from django.test import Client

from inference import services

pytestmark = pytest.mark.django_db

LLAMA = "pipeline.backends.llama_cpp.LlamaCppBackend"
OPENAI = "pipeline.backends.openai_compat.OpenAICompatBackend"


def offered(client: Client) -> list[dict[str, str]]:
    return list(client.get("/").context["backends"])


def test_echo_is_not_offered_with_debug_off(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = False
    settings.ORCHESTRATOR_AUTH_REQUIRED = False  # (the page's own gate: tests/test_auth.py)
    response = client.get("/")
    names = [backend["name"] for backend in response.context["backends"]]
    # The test backends include "echo" and "slow-echo" (both EchoBackend): neither shows.
    assert "echo" not in names and "slow-echo" not in names
    assert "local" in names
    # The configured default (echo) is hidden: the first shown backend is selected.
    assert response.context["default_backend"] == names[0]
    html = response.content.decode()
    assert 'value="echo"' not in html
    assert f'value="{names[0]}" selected' in html


def test_echo_is_offered_with_debug_on(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = True
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    response = client.get("/")
    names = [backend["name"] for backend in response.context["backends"]]
    assert "echo" in names and response.context["default_backend"] == "echo"
    assert 'value="echo" selected' in response.content.decode()


def test_each_backend_shows_its_model(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_AUTH_REQUIRED = False
    settings.ORCHESTRATOR_BACKENDS = {
        "local": {"class": LLAMA, "options": {}},
        "qwen": {"class": LLAMA, "options": {"model_path": "/models/qwen2.5-0.5b.Q4.gguf"}},
        "openai": {"class": OPENAI, "options": {"model": "gpt-4o-mini", "api_key": "k"}},
        "custom": {"class": "somewhere.CustomBackend", "options": {}},
    }
    settings.ORCHESTRATOR_DEFAULT_BACKEND = "openai"
    assert offered(client) == [
        {"name": "custom", "model": ""},
        {"name": "local", "model": "SmolLM2-135M-Instruct"},
        {"name": "openai", "model": "gpt-4o-mini"},
        {"name": "qwen", "model": "qwen2.5-0.5b.Q4"},
    ]
    html = client.get("/").content.decode()
    assert ">openai · gpt-4o-mini</option>" in html
    assert ">custom</option>" in html


def test_the_default_models_match_the_engine() -> None:
    """The page may not import the engine (tests/test_layering.py); this test may."""
    from pipeline.backends.echo import EchoBackend
    from pipeline.backends.llama_cpp import LlamaCppBackend

    assert {
        "LlamaCppBackend": LlamaCppBackend(name="local").model,
        "EchoBackend": EchoBackend.model,
    } == services.DEFAULT_MODELS


@pytest.mark.django_db
def test_the_chat_page_loads_nothing_from_elsewhere(client) -> None:  # type: ignore[no-untyped-def]
    policy = client.get("/")["Content-Security-Policy"]
    assert "img-src 'self' data:" in policy and "default-src 'self'" in policy
