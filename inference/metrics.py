"""Prometheus metrics, named ``orchestrator_*`` in base units, low-cardinality labels.

Web and worker processes each keep their own registry. The web process serves
``GET /metrics``; a worker started with ``run_pipeline --metrics-port N`` serves
its own on that port (scrape both). We chose per-process scrape ports over
prometheus_client's multiprocess mode because workers run on other hosts than
the web in the scaled mode, where a shared metrics directory cannot exist.
In embedded mode the worker lives in the web process, so ``/metrics`` has it all.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram, Info

# LLM latencies span milliseconds (echo, first token) to minutes (long answers).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

BUILD = Info("orchestrator_build", "Version of the running orchestrator")
BUILD.info({"version": "1.0.0"})
CONFIG_INFO = Info("orchestrator_config", "The hash of the configuration in effect")
CONFIG_RELOADS = Counter(
    "orchestrator_config_reloads_total", "Configuration reloads by result", ["result"]
)
CONFIG_RESTART_REQUIRED = Gauge(
    "orchestrator_config_restart_required",
    "1 once a reload changed a key that only a restart applies",
)

REQUESTS = Counter(
    "orchestrator_requests_total",
    "Requests that reached a final status",
    ["transport", "backend", "status"],
)
SUBMITTED = Counter("orchestrator_requests_submitted_total", "Accepted submits", ["transport"])
REFUSED = Counter("orchestrator_requests_refused_total", "Refused submits", ["reason"])
SUBMIT_GROUP = Histogram(
    "orchestrator_submit_group_size",
    "Single submits stored by one transaction (a web process's group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
REQUEST_DURATION = Histogram(
    "orchestrator_request_duration_seconds",
    "From submit to the final status",
    ["backend"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "orchestrator_queue_wait_seconds",
    "From submit (or requeue) to claim",
    ["priority"],
    buckets=LATENCY_BUCKETS,
)
STAGE_DURATION = Histogram(
    "orchestrator_stage_duration_seconds",
    "Time spent per stage",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "orchestrator_time_to_first_token_seconds",
    "From the attempt's start to its first token",
    ["backend", "model"],
    buckets=LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "orchestrator_time_per_output_token_seconds",
    "Inference time per generated token",
    ["backend", "model"],
    buckets=TOKEN_BUCKETS,
)
TOKENS = Counter(
    "orchestrator_tokens_total",
    "Tokens backends consumed (every final status), by the model actually run",
    ["direction", "backend", "model"],
)
IN_FLIGHT = Gauge("orchestrator_worker_in_flight", "Requests this worker process is running")
BACKEND_ERRORS = Counter(
    "orchestrator_backend_errors_total", "Backend calls that failed", ["backend", "code"]
)
BACKEND_RETRIES = Counter("orchestrator_backend_retries_total", "Backend retries", ["backend"])
BREAKER_STATE = Gauge(
    "orchestrator_circuit_breaker_state",
    "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open",
    ["backend"],
)
CANCELLATIONS = Counter("orchestrator_cancellations_total", "Attempts stopped early", ["reason"])
LEASE_RECLAIMS = Counter(
    "orchestrator_lease_reclaims_total", "Expired leases handled by the reaper", ["outcome"]
)
CONNECTIONS_OPEN = Gauge(
    "orchestrator_connections_open", "Streaming connections open", ["transport"]
)
HTTP_REQUESTS = Counter(
    "orchestrator_http_requests_total", "HTTP responses", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "orchestrator_http_request_duration_seconds",
    "HTTP response time (to the first body byte for streams)",
    ["route"],
    buckets=LATENCY_BUCKETS,
)


def record_finished(request, status: str, timings: dict[str, float], usage=None) -> None:  # type: ignore[no-untyped-def]
    """Count a request that reached ``status`` in this (worker) process."""
    backend = request.backend_used or request.backend
    REQUESTS.labels(request.transport, request.backend, status).inc()
    REQUEST_DURATION.labels(backend).observe((timezone.now() - request.created_at).total_seconds())
    for stage in ("rag", "assemble", "cache", "inference", "post", "stream"):
        if stage in timings:
            STAGE_DURATION.labels(stage).observe(timings[stage])
    if usage is None:
        return
    model = request.model_used or backend
    if "first_token" in timings:
        TIME_TO_FIRST_TOKEN.labels(backend, model).observe(timings["first_token"])
    if usage.completion_tokens and "inference" in timings:
        per_token = timings["inference"] / usage.completion_tokens
        TIME_PER_OUTPUT_TOKEN.labels(backend, model).observe(per_token)


COST = Counter(
    "orchestrator_cost_total",
    "What backend calls cost by the price table (models.prices), in its currency",
    ["backend", "model"],
)
# Per API key (its 8-character prefix; "none" without a key): one series per key
# and direction, so as many as there are keys. usage.per_key_metrics turns them off.
KEY_TOKENS = Counter(
    "orchestrator_key_tokens_total", "Tokens backends consumed per API key", ["key", "direction"]
)
KEY_COST = Counter("orchestrator_key_cost_total", "What backend calls cost per API key", ["key"])


def record_usage(request, consumed: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    """Count what a request's backend call consumed (``consumed``: the usage fields
    the worker wrote to its row)."""
    backend = request.backend_used or request.backend
    model = consumed["model_used"] or backend
    prompt, completion = consumed["prompt_tokens"], consumed["completion_tokens"]
    TOKENS.labels("prompt", backend, model).inc(prompt)
    TOKENS.labels("completion", backend, model).inc(completion)
    COST.labels(backend, model).inc(float(consumed["cost"]))
    if settings.ORCHESTRATOR_PER_KEY_METRICS:
        key = request.api_key_id or "none"
        KEY_TOKENS.labels(key, "prompt").inc(prompt)
        KEY_TOKENS.labels(key, "completion").inc(completion)
        KEY_COST.labels(key).inc(float(consumed["cost"]))


# --- the response cache and in-flight dedup ---------------------------------------------
CACHE_LOOKUPS = Counter(
    "orchestrator_cache_lookups_total",
    "What the cache did for a request: hit, miss, collapsed, bypass, ineligible",
    ["result"],
)
CACHE_STORES = Counter(
    "orchestrator_cache_stores_total", "Answers of cacheable requests", ["result"]
)
CACHE_ERRORS = Counter(
    "orchestrator_cache_errors_total", "Cache operations that failed (served as misses)", ["op"]
)
SAVED_TOKENS = Counter(
    "orchestrator_saved_tokens_total",
    "Tokens answered without calling a backend (prompt + completion)",
    ["backend", "via"],
)
DEDUP = Counter(
    "orchestrator_dedup_total",
    "In-flight dedup: leader, follower, overflow, detached, promoted",
    ["outcome"],
)


# --- priority tiers and fair share -------------------------------------------------------
PRIORITY_CLAMPED = Counter(
    "orchestrator_priority_clamped_total", "Requests run below the priority they asked for"
)
PRIORITY_PROMOTIONS = Counter(
    "orchestrator_priority_promotions_total",
    "Pending requests aging moved up a tier",
    ["from_tier", "to_tier"],
)
