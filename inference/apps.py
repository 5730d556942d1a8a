from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference requests"

    def ready(self) -> None:
        from inference import checks  # noqa: F401  (registers system checks)
        from orchestrator_site.logs import install_record_factory

        install_record_factory()
