from __future__ import annotations

from django.apps import AppConfig


class OrchestratorSiteConfig(AppConfig):
    """The project itself, as an app for the commands that host the whole of it:
    ``runserver`` (daphne), ``serve`` (uvicorn) and ``infer`` (a prompt from the
    shell, with the engine inside in embedded mode)."""

    name = "orchestrator_site"
    verbose_name = "Prompt Orchestrator"

    def ready(self) -> None:
        from orchestrator_site import checks  # noqa: F401  (registers the configuration checks)
        from orchestrator_site.reload import watch

        watch()  # follow the configuration file, if there is one
