"""Settings for Prompt Orchestrator: one env-driven file.

Zero variables give the embedded (laptop) mode: SQLite in WAL mode, the in-memory
channel layer, a local-memory cache and the pipeline worker hosted inside the
server process. ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` switch to the
scaled mode, where workers run as separate ``manage.py run_pipeline`` processes.
Layering: code defaults -> optional TOML file (``ORCHESTRATOR_CONFIG``) ->
environment variables. Production requirements are enforced by system checks
(``inference/checks.py``), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url

from orchestrator_site import env
from orchestrator_site.config import load as load_config
from orchestrator_site.env import env_bool, env_float, env_int, env_list, env_str

# Every malformed variable is reported together, by the system check, instead of
# a traceback for the first (orchestrator_site.env); collection ends at the end.
env.collect_problems()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("ORCHESTRATOR_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

# A well-known key: the deploy check (inference.E001) refuses it when DEBUG is off.
DEV_SECRET_KEY = "dev-insecure-prompt-orchestrator-key-change-me-in-production"
# An empty SECRET_KEY= is "not set" (Django itself would fail on first use, with a
# traceback): the development key then stands in, and with DEBUG off the system
# check refuses it with the other problems (inference.checks).
SECRET_KEY = env_str("SECRET_KEY") or DEV_SECRET_KEY
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
# Kubernetes: the pod's own IP (downward API), which is the Host a Prometheus
# scraping pods by address sends (deploy/k8s/base/web.yaml).
if POD_IP := env_str("POD_IP"):
    ALLOWED_HOSTS.append(POD_IP)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "inference.errors.csrf_failure"

INSTALLED_APPS = [
    # First, so its commands win: `runserver` is daphne's with
    # orchestrator_site.server.OrchestratorServer (the embedded engine starts at
    # boot; 1009/1012 close frames) over daphne's and staticfiles' own.
    "orchestrator_site",
    "inference",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "channels",
    "rest_framework",
    "rest_framework_api_key",  # AbstractAPIKey, subclassed by inference.ApiKey
    "adrf",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "pipeline",
]

# The stock names, which Django's deploy checks look for. What runs is each one's
# subclass in orchestrator_site.middleware (hooks inline on the event loop, no
# thread hop), loaded by its ASGIHandler; tests/test_wiring.py pins the classes.
MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "orchestrator_site.urls"
ASGI_APPLICATION = "orchestrator_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")


def _database(url: str) -> dict[str, Any]:
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN, so two writers queue on
                # the busy timeout instead of failing with "database is locked".
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                ),
            },
            # One connection per thread for the process's life: reopening would
            # re-run the PRAGMAs on every database_sync_to_async call.
            "CONN_MAX_AGE": None,
            "TEST": {"NAME": str(DATA_DIR / "test-db.sqlite3")},
        }
    config: dict[str, Any] = dict(
        dj_database_url.parse(url, conn_max_age=0, conn_health_checks=True)
    )
    if config["ENGINE"] == "django.db.backends.postgresql":
        # Without a pool every ASGI request opens a backend (~3x slower, DESIGN §12).
        config.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", 2),
            "max_size": env_int("DATABASE_POOL_MAX", 20),
            "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0),
        }
    return config


DATABASES = {"default": _database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer and cache ------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
PIPELINE_CHANNEL = "pipeline"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py's 5 s socket timeout collides with the layer's 5 s
                # blocking read (django/channels_redis#422): disable it.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000, "expiry": 60},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Static files, i18n -------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    # API keys for clients; sessions for staff (browsing the API from the admin).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "inference.drf.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["inference.drf.IsPermittedCaller"],
    "DEFAULT_THROTTLE_CLASSES": ["inference.drf.CallerRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # ASCII JSON (\uXXXX escapes): a row stored before validation caught a lone
    # surrogate still renders, where UTF-8 output would fail the whole listing.
    "UNICODE_JSON": False,
    "DEFAULT_PARSER_CLASSES": ["inference.parsers.LimitedJSONParser"],
    "EXCEPTION_HANDLER": "inference.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "inference.schema.OrchestratorAutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Prompt Orchestrator API",
    "DESCRIPTION": (
        "Durable, observable, streamable LLM requests: submit a prompt, poll its "
        "status and result, or stream its tokens over SSE or WebSocket."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs are public: a bad key sent to them is not an error.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "RequestStatusEnum": "inference.models.Status",
        "HealthStatusEnum": ["healthy", "unhealthy"],
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inference.schema.add_streaming_routes",
    ],
}

# --- CORS: permissive in development, an allow-list otherwise ------------------------
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_ALLOW_ALL_ORIGINS = DEBUG and not CORS_ALLOWED_ORIGINS
RATE_LIMIT_HEADERS = [
    "RateLimit",
    "RateLimit-Policy",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
]
CORS_EXPOSE_HEADERS = [
    *("Location", "Retry-After", "retry-after-ms", "x-should-retry", "x-request-id"),
    *("X-Orchestrator-Request-Id", "X-Orchestrator-Ignored-Params", *RATE_LIMIT_HEADERS),
]
# The OpenAI JS SDK in a browser sends these on every call (django-cors-headers
# has no prefix wildcard, so each is named).
OPENAI_SDK_HEADERS = [
    *("openai-organization", "openai-project", "openai-beta", "x-stainless-arch"),
    *("x-stainless-async", "x-stainless-lang", "x-stainless-os"),
    *("x-stainless-package-version", "x-stainless-runtime", "x-stainless-runtime-version"),
    *("x-stainless-retry-count", "x-stainless-read-timeout", "x-stainless-timeout"),
    *("x-stainless-helper-method", "x-stainless-poll-helper", "x-stainless-custom-poll-interval"),
]
CORS_ALLOW_HEADERS = [
    *("accept", "authorization", "content-type", "user-agent", "x-csrftoken"),
    *("x-requested-with", "x-api-key", "idempotency-key", "last-event-id", "x-request-id"),
    *OPENAI_SDK_HEADERS,
]

# --- Behind a TLS-terminating proxy (all off by default: `make run` is plain HTTP) ---
# The proxy must set X-Forwarded-Proto; only then may Django trust it.
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers probe health over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# Where the admin lives: an unguessable path keeps scanners off the login page.
ADMIN_URL = env_str("ADMIN_URL", "admin/")
# The chat page's sign-in, for accounts with or without staff rights.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# --- The orchestrator: orchestrator_site/config.py ------------------------------------
# One typed schema for everything the orchestrator owns, one precedence (defaults <
# ORCHESTRATOR_CONFIG TOML file < environment < *_FILE secrets), flattened into the
# ORCHESTRATOR_* settings here; problems fail `manage.py check` with each key's path
# (orchestrator_site/checks.py). `manage.py config` shows every value and its source.
ORCHESTRATOR_CONFIGURATION = load_config()
globals().update(ORCHESTRATOR_CONFIGURATION.settings(debug=DEBUG, redis_url=REDIS_URL))
# The largest WebSocket message: past it the server closes the socket with 1009
# itself (serve: uvicorn; runserver: daphne's name for it); the consumer checks too.
WEBSOCKET_MAX_MESSAGE_SIZE = ORCHESTRATOR_CONFIGURATION.config.requests.max_body_bytes
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = WEBSOCKET_MAX_MESSAGE_SIZE

# --- Logging --------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        },
        "json": {"()": "inference.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env_str("LOG_FORMAT", "plain" if DEBUG else "json"),
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

env.collect_problems(False)
