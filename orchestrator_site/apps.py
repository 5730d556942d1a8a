from __future__ import annotations

from django.apps import AppConfig


class OrchestratorSiteConfig(AppConfig):
    """The project itself, as an app for the commands that host the whole of it:
    ``runserver`` (daphne), ``serve`` (uvicorn) and ``infer`` (a prompt from the
    shell, with the engine inside in embedded mode)."""

    name = "orchestrator_site"
    verbose_name = "Prompt Orchestrator"
