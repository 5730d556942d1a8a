"""System checks: invalid or unsafe configuration fails at startup, clearly."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string


@register(Tags.security, deploy=True)
def check_production_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors = []
    # (With DEBUG off, inference.E003 says so already, without --deploy.)
    if settings.SECRET_KEY == settings.DEV_SECRET_KEY and settings.DEBUG:
        errors.append(
            Error(
                "SECRET_KEY is the development key.",
                hint="Set SECRET_KEY (or SECRET_KEY_FILE) to a long random value.",
                id="inference.E001",
            )
        )
    if not settings.ALLOWED_HOSTS or "*" in settings.ALLOWED_HOSTS:
        errors.append(
            Error(
                "ALLOWED_HOSTS is empty or a wildcard.",
                hint="Set ALLOWED_HOSTS to the comma-separated host names you serve.",
                id="inference.E002",
            )
        )
    if not settings.ORCHESTRATOR_AUTH_REQUIRED:
        errors.append(
            Error(
                "API keys are not required: anyone who reaches the server can use it.",
                hint="Unset ORCHESTRATOR_AUTH_REQUIRED (it defaults to on when DEBUG is off).",
                id="inference.E004",
            )
        )
    if settings.CORS_ALLOW_ALL_ORIGINS:
        errors.append(
            Error(
                "CORS allows every origin.",
                hint="Set CORS_ALLOWED_ORIGINS to the origins of your web clients.",
                id="inference.E005",
            )
        )
    if "*" in settings.ORCHESTRATOR_TRUSTED_PROXIES:
        errors.append(
            Error(
                "Every peer is a trusted proxy: any client can forge its address.",
                hint="List your proxies' addresses in ORCHESTRATOR_TRUSTED_PROXIES.",
                id="inference.E006",
            )
        )
    return errors


@register(Tags.security, deploy=True)
def check_metrics_access(app_configs: Any, **kwargs: Any) -> list[Warning]:
    if settings.ORCHESTRATOR_METRICS_TOKEN:
        return []
    return [
        Warning(
            "/metrics is open to anyone who reaches the server (queue depths, key "
            "prefixes' traffic, backend errors).",
            hint="Set ORCHESTRATOR_METRICS_TOKEN (Prometheus sends it as a bearer token).",
            id="inference.W007",
        )
    ]


@register()
def check_debug_off_needs_secret(app_configs: Any, **kwargs: Any) -> list[Error]:
    """With DEBUG off the development key is refused even without --deploy."""
    if not settings.DEBUG and settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        return [
            Error(
                "DEBUG is off but SECRET_KEY is unset, empty or the development key.",
                hint="Set SECRET_KEY (or SECRET_KEY_FILE) to a long random value, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(50))'.",
                id="inference.E003",
            )
        ]
    return []


@register()
def check_orchestrator_config(app_configs: Any, **kwargs: Any) -> list[Error | Warning]:
    problems: list[Error | Warning] = []
    backends = settings.ORCHESTRATOR_BACKENDS
    if settings.ORCHESTRATOR_DEFAULT_BACKEND not in backends:
        problems.append(
            Error(
                f"models.default_backend: {settings.ORCHESTRATOR_DEFAULT_BACKEND!r} is not "
                "a configured backend.",
                hint=f"Configured backends: {sorted(backends)}.",
                id="inference.E010",
            )
        )
    for name, spec in backends.items():
        problems += _check_importable(spec.get("class", ""), f"backend {name!r}", "E011")
        unknown = [f for f in spec.get("fallback", []) if f not in backends or f == name]
        if unknown:
            problems.append(
                Error(
                    f"models.backends.{name}.fallback: unknown backends {unknown}.",
                    id="inference.E016",
                )
            )
    for path in settings.ORCHESTRATOR_STAGES:
        problems += _check_importable(path, "stage", "E012")
    if settings.ORCHESTRATOR_WORKER_MODE not in ("embedded", "external"):
        problems.append(
            Error(
                "ORCHESTRATOR_WORKER_MODE must be 'embedded' or 'external'.",
                id="inference.E013",
            )
        )
    elif settings.ORCHESTRATOR_WORKER_MODE == "external" and not settings.REDIS_URL:
        problems.append(
            Warning(
                "External workers without REDIS_URL: the in-memory channel layer "
                "cannot reach them, so they find work only by polling.",
                id="inference.W014",
            )
        )
    if settings.ORCHESTRATOR_CONCURRENCY < 1 or settings.ORCHESTRATOR_LEASE_SECONDS <= 0:
        problems.append(
            Error("Concurrency and lease seconds must be positive.", id="inference.E015")
        )
    return problems


def _check_importable(path: str, what: str, code: str) -> list[Error | Warning]:
    try:
        import_string(path)
    except ImportError as exc:
        return [Error(f"Cannot import {what} class {path!r}: {exc}", id=f"inference.{code}")]
    return []
