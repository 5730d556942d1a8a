"""System checks of the orchestrator's configuration (orchestrator_site/config.py):
each problem names the key's path, and fails `manage.py check`, `serve` and
`run_pipeline` alike."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from orchestrator_site import env


@register()
def check_environment(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Django's own settings' variables (settings.py) that could not be read."""
    return [Error(f"Environment: {problem}.", id="orchestrator.E003") for problem in env.PROBLEMS]


@register()
def check_configuration(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    loaded = settings.ORCHESTRATOR_CONFIGURATION
    where = f" (ORCHESTRATOR_CONFIG={loaded.path})" if loaded.path else ""
    problems: list[CheckMessage] = [
        Error(f"Configuration{where}: {error}", id="orchestrator.E001") for error in loaded.errors
    ]
    if loaded.unknown_env:
        names = ", ".join(loaded.unknown_env)
        message = f"Environment variables that name no configuration key: {names}."
        hint = "Check the spelling; `manage.py config` lists every key and its variables."
        if settings.DEBUG:
            problems.append(Warning(message, hint=hint, id="orchestrator.W002"))
        else:
            problems.append(Error(message, hint=hint, id="orchestrator.E002"))
    problems += [
        Warning(f"Configuration{where}: {note}", id="orchestrator.W003") for note in loaded.warnings
    ]
    return problems
