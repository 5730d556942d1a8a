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

import tomllib
from pathlib import Path
from typing import Any

import dj_database_url

from orchestrator_site.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("ORCHESTRATOR_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

# A well-known key: the deploy check (inference.E001) refuses it when DEBUG is off.
DEV_SECRET_KEY = "dev-insecure-prompt-orchestrator-key-change-me-in-production"
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
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
CORS_EXPOSE_HEADERS = ["Location", "Retry-After", *RATE_LIMIT_HEADERS]
CORS_ALLOW_HEADERS = [
    *("accept", "authorization", "content-type", "user-agent", "x-csrftoken"),
    *("x-requested-with", "x-api-key", "idempotency-key", "last-event-id"),
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

# --- The orchestrator -----------------------------------------------------------------
_config_file = env_str("ORCHESTRATOR_CONFIG")
_file_config: dict[str, Any] = tomllib.loads(Path(_config_file).read_text()) if _config_file else {}


def _cfg(key: str, default: Any) -> Any:
    """A value from the TOML file's top level, else the code default."""
    return _file_config.get(key, default)


# Where the pipeline worker runs: "embedded" (inside the ASGI server process) or
# "external" (separate `manage.py run_pipeline` processes). The in-memory channel
# layer cannot cross processes, so scaled mode (REDIS_URL) defaults to external.
ORCHESTRATOR_WORKER_MODE = env_str(
    "ORCHESTRATOR_WORKER_MODE", "external" if REDIS_URL else "embedded"
)
ORCHESTRATOR_CONCURRENCY = env_int("ORCHESTRATOR_CONCURRENCY", _cfg("concurrency", 8))
ORCHESTRATOR_LEASE_SECONDS = env_float("ORCHESTRATOR_LEASE_SECONDS", 30.0)
ORCHESTRATOR_REAP_INTERVAL_SECONDS = env_float("ORCHESTRATOR_REAP_INTERVAL_SECONDS", 5.0)
ORCHESTRATOR_POLL_INTERVAL_SECONDS = env_float("ORCHESTRATOR_POLL_INTERVAL_SECONDS", 2.0)
ORCHESTRATOR_MAX_ATTEMPTS = env_int("ORCHESTRATOR_MAX_ATTEMPTS", 3)
ORCHESTRATOR_DEFAULT_DEADLINE_SECONDS = env_float("ORCHESTRATOR_DEFAULT_DEADLINE_SECONDS", 600.0)
ORCHESTRATOR_MAX_DEADLINE_SECONDS = env_float("ORCHESTRATOR_MAX_DEADLINE_SECONDS", 86_400.0)
ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS = env_float("ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS", 30.0)
# Tokens are persisted in batches: whichever comes first, N tokens or T seconds.
ORCHESTRATOR_CHUNK_BATCH_TOKENS = env_int("ORCHESTRATOR_CHUNK_BATCH_TOKENS", 32)
ORCHESTRATOR_CHUNK_BATCH_SECONDS = env_float("ORCHESTRATOR_CHUNK_BATCH_SECONDS", 0.05)
# Stream readers re-check the database this often even without a wake-up event.
ORCHESTRATOR_STREAM_POLL_SECONDS = env_float("ORCHESTRATOR_STREAM_POLL_SECONDS", 5.0)
# SSE comment lines that keep proxies from closing an idle stream.
ORCHESTRATOR_SSE_KEEPALIVE_SECONDS = env_float("ORCHESTRATOR_SSE_KEEPALIVE_SECONDS", 15.0)
ORCHESTRATOR_RESULT_WAIT_MAX_SECONDS = env_float("ORCHESTRATOR_RESULT_WAIT_MAX_SECONDS", 30.0)

# API keys: required unless DEBUG (so `make run` needs none). Streams opened
# with a stream token (browsers' EventSource) may start within this many seconds.
ORCHESTRATOR_AUTH_REQUIRED = env_bool("ORCHESTRATOR_AUTH_REQUIRED", not DEBUG)
ORCHESTRATOR_STREAM_TOKEN_SECONDS = env_int("ORCHESTRATOR_STREAM_TOKEN_SECONDS", 900)
# A bearer token for /metrics ("" = open: restrict it at the network instead).
ORCHESTRATOR_METRICS_TOKEN = env_str("ORCHESTRATOR_METRICS_TOKEN")

# Admission control (0 = no limit): pending requests in all (503 beyond). Per
# caller (a key, or an IP when anonymous; a key may override both): API calls
# per minute and requests in flight (429 beyond, with Retry-After and RateLimit
# headers), shared by all processes through Redis in the scaled mode.
ORCHESTRATOR_MAX_PENDING = env_int("ORCHESTRATOR_MAX_PENDING", 10_000)
ORCHESTRATOR_PENDING_COUNT_SECONDS = env_float("ORCHESTRATOR_PENDING_COUNT_SECONDS", 0.25)
ORCHESTRATOR_REQUESTS_PER_MINUTE = env_int("ORCHESTRATOR_REQUESTS_PER_MINUTE", 600)
ORCHESTRATOR_MAX_IN_FLIGHT = env_int("ORCHESTRATOR_MAX_IN_FLIGHT", 32)
# Per caller and web process: open SSE streams + WebSockets. Per WebSocket:
# messages per second (a burst of as many is allowed).
ORCHESTRATOR_MAX_STREAMS = env_int("ORCHESTRATOR_MAX_STREAMS", 100)
ORCHESTRATOR_WS_MESSAGES_PER_SECOND = env_int("ORCHESTRATOR_WS_MESSAGES_PER_SECOND", 20)
# Per WebSocket: requests it follows at once (its submits and resumes).
ORCHESTRATOR_WS_MAX_READERS = env_int("ORCHESTRATOR_WS_MAX_READERS", 64)
# Per client IP: calls refused for want of a usable key (429 beyond), so a flood
# without a key is bounded too.
ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE = env_int("ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE", 60)
# Open SSE streams and WebSockets: how often their key is re-checked (revoked,
# expired or deleted ends them; every message re-checks too), and their lifetime.
ORCHESTRATOR_CREDENTIAL_RECHECK_SECONDS = env_float("ORCHESTRATOR_CREDENTIAL_RECHECK_SECONDS", 30.0)
ORCHESTRATOR_CONNECTION_MAX_SECONDS = env_float("ORCHESTRATOR_CONNECTION_MAX_SECONDS", 3600.0)
# Reading a request, before any check runs (serve and runserver alike): its
# request line + headers, the seconds they may take, the seconds its body may take.
ORCHESTRATOR_MAX_HEADER_BYTES = env_int("ORCHESTRATOR_MAX_HEADER_BYTES", 32_768)
ORCHESTRATOR_HEADER_READ_SECONDS = env_float("ORCHESTRATOR_HEADER_READ_SECONDS", 10.0)
ORCHESTRATOR_BODY_READ_SECONDS = env_float("ORCHESTRATOR_BODY_READ_SECONDS", 30.0)
# `serve --proxy-headers`: the proxies whose X-Forwarded-For/-Proto are believed
# (addresses or networks); the client is the right-most address none of them is.
ORCHESTRATOR_TRUSTED_PROXIES = env_list("ORCHESTRATOR_TRUSTED_PROXIES", ["127.0.0.1", "::1"])

ORCHESTRATOR_DASHBOARD_INTERVAL_SECONDS = env_float("ORCHESTRATOR_DASHBOARD_INTERVAL_SECONDS", 2.0)
# Where `run_pipeline --metrics-port` listens (0.0.0.0 for a Prometheus elsewhere).
ORCHESTRATOR_METRICS_ADDR = env_str("ORCHESTRATOR_METRICS_ADDR", "127.0.0.1")

# Input caps.
ORCHESTRATOR_MAX_BODY_BYTES = env_int("ORCHESTRATOR_MAX_BODY_BYTES", 1024 * 1024)
ORCHESTRATOR_MAX_PROMPT_CHARS = env_int("ORCHESTRATOR_MAX_PROMPT_CHARS", 100_000)
ORCHESTRATOR_MAX_METADATA_BYTES = env_int("ORCHESTRATOR_MAX_METADATA_BYTES", 16 * 1024)
ORCHESTRATOR_MAX_METADATA_DEPTH = env_int("ORCHESTRATOR_MAX_METADATA_DEPTH", 8)
# The largest WebSocket message: past it the server closes the socket with 1009
# itself (serve: uvicorn; runserver: daphne's name for it); the consumer checks too.
WEBSOCKET_MAX_MESSAGE_SIZE = DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = ORCHESTRATOR_MAX_BODY_BYTES
ORCHESTRATOR_DEFAULT_MAX_TOKENS = env_int("ORCHESTRATOR_DEFAULT_MAX_TOKENS", 256)
ORCHESTRATOR_MAX_TOKENS_CEILING = env_int("ORCHESTRATOR_MAX_TOKENS_CEILING", 4096)


# Model backends: name -> {"class": dotted path, "options": {...}, "fallback": [names]}.
# "local" (SmolLM2 via llama.cpp) and "echo" always exist; "openai" and
# "anthropic" appear when their key or URL is set. Secrets may come from *_FILE.
def _default_backends() -> dict[str, dict[str, Any]]:
    backends: dict[str, dict[str, Any]] = {
        "local": {
            "class": "pipeline.backends.llama_cpp.LlamaCppBackend",
            "options": {
                "model_path": env_str("ORCHESTRATOR_LOCAL_MODEL_PATH"),  # "" = SmolLM2
                "concurrency": env_int("ORCHESTRATOR_LOCAL_CONCURRENCY", 1),
                "n_ctx": env_int("ORCHESTRATOR_LOCAL_CONTEXT", 2048),
            },
        },
        "echo": {
            "class": "pipeline.backends.echo.EchoBackend",
            "options": {
                "token_delay": env_float("ORCHESTRATOR_ECHO_TOKEN_DELAY", 0.0),
                "failure_rate": env_float("ORCHESTRATOR_ECHO_FAILURE_RATE", 0.0),
            },
        },
    }
    openai_url = env_str("OPENAI_BASE_URL")
    openai_key = env_str("OPENAI_API_KEY")
    if openai_url or openai_key:
        backends["openai"] = {
            "class": "pipeline.backends.openai_compat.OpenAICompatBackend",
            "options": {
                "base_url": openai_url or "https://api.openai.com/v1",
                "api_key": openai_key,
                "model": env_str("OPENAI_MODEL", "gpt-4o-mini"),
            },
            "fallback": env_list("OPENAI_FALLBACK", ["local"]),
        }
    anthropic_key = env_str("ANTHROPIC_API_KEY")
    if anthropic_key:
        backends["anthropic"] = {
            "class": "pipeline.backends.anthropic.AnthropicBackend",
            "options": {
                "base_url": env_str("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
                "api_key": anthropic_key,
                "model": env_str("ANTHROPIC_MODEL", "claude-3-5-haiku-latest"),
            },
            "fallback": env_list("ANTHROPIC_FALLBACK", ["local"]),
        }
    return backends


ORCHESTRATOR_BACKENDS: dict[str, dict[str, Any]] = _cfg("backends", _default_backends())
ORCHESTRATOR_DEFAULT_BACKEND = env_str(
    "ORCHESTRATOR_DEFAULT_BACKEND", _cfg("default_backend", "local")
)
# Resilience shared by all backends (pipeline/resilience.py).
ORCHESTRATOR_BACKEND_RETRIES = env_int("ORCHESTRATOR_BACKEND_RETRIES", 2)
ORCHESTRATOR_BACKEND_BACKOFF_BASE_SECONDS = env_float(
    "ORCHESTRATOR_BACKEND_BACKOFF_BASE_SECONDS", 0.5
)
ORCHESTRATOR_BACKEND_BACKOFF_MAX_SECONDS = env_float(
    "ORCHESTRATOR_BACKEND_BACKOFF_MAX_SECONDS", 10.0
)
ORCHESTRATOR_BREAKER_FAILURES = env_int("ORCHESTRATOR_BREAKER_FAILURES", 5)
ORCHESTRATOR_BREAKER_RESET_SECONDS = env_float("ORCHESTRATOR_BREAKER_RESET_SECONDS", 10.0)
ORCHESTRATOR_BREAKER_MAX_RESET_SECONDS = env_float("ORCHESTRATOR_BREAKER_MAX_RESET_SECONDS", 300.0)
ORCHESTRATOR_STAGES: list[str] = _cfg(
    "stages",
    [
        "pipeline.stages.rag.RagStage",
        "pipeline.stages.assemble.AssembleStage",
        "pipeline.stages.infer.InferenceStage",
        "pipeline.stages.post.PostStage",
        "pipeline.stages.stream.StreamStage",
    ],
)
ORCHESTRATOR_SYSTEM_PROMPT = env_str(
    "ORCHESTRATOR_SYSTEM_PROMPT",
    _cfg("system_prompt", "You are a helpful, concise assistant."),
)
# Appended to the system prompt when passages were retrieved; {sources} is the
# numbered list the model is asked to cite as [1], [2], ...
ORCHESTRATOR_RAG_TEMPLATE = _cfg(
    "rag_template",
    "Use the numbered sources below when they help, and cite them like [1].\n\n{sources}",
)
ORCHESTRATOR_RAG_TOP_K = env_int("ORCHESTRATOR_RAG_TOP_K", _cfg("rag_top_k", 3))
ORCHESTRATOR_RAG_MIN_SCORE = env_float("ORCHESTRATOR_RAG_MIN_SCORE", 0.0)
ORCHESTRATOR_DOCUMENT_CHUNK_CHARS = env_int("ORCHESTRATOR_DOCUMENT_CHUNK_CHARS", 800)
# The model's context window in tokens: system prompt + history + prompt +
# max_tokens must fit; the oldest turns of a session are dropped first.
ORCHESTRATOR_CONTEXT_TOKENS = env_int("ORCHESTRATOR_CONTEXT_TOKENS", _cfg("context_tokens", 2048))
ORCHESTRATOR_SESSION_MAX_TURNS = env_int("ORCHESTRATOR_SESSION_MAX_TURNS", 50)
# Post-processing of the stored result.
ORCHESTRATOR_MAX_OUTPUT_CHARS = env_int("ORCHESTRATOR_MAX_OUTPUT_CHARS", 100_000)
# [[regex, replacement], ...] applied to the stored result (not to streamed tokens).
ORCHESTRATOR_REDACTIONS: list[list[str]] = _cfg("redactions", [])

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
