from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference requests"

    def ready(self) -> None:
        from inference import checks, schema  # noqa: F401  (checks, OpenAPI extensions)
        from inference.logs import install_record_factory

        install_record_factory()
