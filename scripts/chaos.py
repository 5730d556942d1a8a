"""Chaos harness: no request lost or run twice while workers die and Redis and
PostgreSQL restart.

    .venv/bin/python -m scripts.chaos --requests 300 --duration 60 --kill-every 5

Starts web (`manage.py serve`) and three `run_pipeline` workers on PostgreSQL +
Redis with the echo backend (random lengths, injected retryable faults), drives
the requests from async clients (10% resubmitted with the same Idempotency-Key,
25% streamed over SSE with one drop and a Last-Event-ID resume, 10% over a
WebSocket with one drop and a resume, 10% through the OpenAI-compatible /v1 and
10% streamed through it, the rest long-polled; a third of them, in every mode,
are temperature-0 repeats of a few prompts, so the response cache answers some
and in-flight dedup collapses others onto one generation), SIGKILLs a random
worker every K seconds (and restarts it), restarts Redis once and PostgreSQL
once, drains, then checks what the clients saw against the database and prints
one table. Exits non-zero unless lost = duplicated = unexpected = stream
mismatches = cache mismatches = chunk errors = 0 and every rejection carried
Retry-After.

It restarts this machine's PostgreSQL and Redis: run it where that is fine
(CI, a dev box), never against shared servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx

from harness.clients import Received, chat_read, sse_read, ws_run
from harness.outages import restart_redis, start_postgres, stop_postgres
from harness.processes import (
    OPEN_ACCESS,
    create_api_key,
    free_port,
    manage,
    run_manage,
    stop,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parent.parent

DATABASE = "orchestrator_chaos"
REDIS_URL = "redis://127.0.0.1:6379/14"

# The repeated prompts: few, and long enough (60-90 tokens at 20 ms) that
# identical requests overlap in flight and a kill often lands mid-stream.
POOL = [f"chaos pool {k}: " + " ".join(f"p{k}w{j}" for j in range(60 + 5 * k)) for k in range(6)]
CACHED_SHARE = 1 / 3


@dataclass
class Outcome:
    """One client's view of one logical request."""

    prompt: str
    mode: str
    key: str
    cached: bool = False  # a temperature-0 repeat from POOL
    request_id: str | None = None
    rejections: int = 0
    rejections_without_retry_after: int = 0
    duplicate_ids: set[str] = field(default_factory=set)
    stream: Received | None = None
    final: dict | None = None

    @property
    def params(self) -> dict:
        """Temperature 0 makes a request cacheable; the others send none, as before."""
        return {"temperature": 0} if self.cached else {}


@dataclass
class Stats:
    kills: int = 0
    in_flight_at_kills: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    peak_rss_kb: Counter[str] = field(default_factory=Counter)


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.port = free_port()
        self.workers: list = []
        self.web = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workers: int) -> None:
        args = ("serve", "--host", "127.0.0.1", "--port", str(self.port))
        self.web = manage(*args, env=self.env, log=self.logs / "web.log")
        wait_until_serving(self.base_url, self.web)
        for _ in range(workers):
            self.start_worker()

    def start_worker(self) -> None:
        log = self.logs / f"worker-{len(self.workers)}.log"
        self.workers.append(manage("run_pipeline", "--concurrency", "20", env=self.env, log=log))

    def kill_random_worker(self) -> None:
        victim = random.choice([w for w in self.workers if w.poll() is None])
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.start_worker()

    def sample_rss(self, stats: Stats) -> None:
        named = [("web", self.web)] + [(f"worker-{i}", w) for i, w in enumerate(self.workers)]
        for name, process in named:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue
            rss = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
            )
            kind = "web" if name == "web" else "worker"
            stats.peak_rss_kb[kind] = max(stats.peak_rss_kb[kind], rss)

    def stop(self) -> None:
        for process in [*self.workers, self.web]:
            if process is not None:
                stop(process)


# --- the clients ----------------------------------------------------------------------


async def back_off(outcome: Outcome, refused: httpx.Response) -> None:
    """A 429/503: counted (it must say when to come back), then honoured."""
    outcome.rejections += 1
    if "retry-after" not in refused.headers:
        outcome.rejections_without_retry_after += 1
    await asyncio.sleep(min(float(refused.headers.get("retry-after", 1)), 2))


async def submit(client: httpx.AsyncClient, outcome: Outcome, deadline: float) -> str | None:
    """POST until accepted; outages and refusals are retried with the same key."""
    while time.monotonic() < deadline:
        try:
            response = await client.post(
                "/api/v1/infer",
                json={"prompt": outcome.prompt, **outcome.params},
                headers={"Idempotency-Key": outcome.key},
            )
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        if response.status_code in (200, 202):
            return response.json()["request_id"]
        if response.status_code in (429, 503):
            await back_off(outcome, response)
            continue
        raise AssertionError(f"unexpected {response.status_code}: {response.text}")
    return None


async def follow_sse(client: httpx.AsyncClient, outcome: Outcome) -> None:
    received = Received()
    dropped = False
    while received.final is None:
        try:
            stop_after = None if dropped else random.randint(1, 4)
            await sse_read(client, outcome.request_id, received, stop_after=stop_after)
            dropped = True  # the deliberate drop; then resume with Last-Event-ID
        except httpx.HTTPStatusError as refused:
            # The database was restarting: the documented 503, with Retry-After.
            if refused.response.status_code != 503:
                raise
            outcome.rejections += 1
            if "retry-after" not in refused.response.headers:
                outcome.rejections_without_retry_after += 1
            await asyncio.sleep(0.5)
        except httpx.HTTPError:
            await asyncio.sleep(0.5)  # an outage cut the stream: resume
    outcome.stream = received


async def result_of(client: httpx.AsyncClient, request_id: str) -> dict:
    while True:
        try:
            response = await client.get(f"/api/v1/result/{request_id}", params={"wait": 10})
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        if response.status_code == 200:
            return response.json()
        if response.status_code != 202:
            await asyncio.sleep(0.5)


async def chat(client: httpx.AsyncClient, outcome: Outcome, deadline: float) -> None:
    """``/v1``, streamed or not, with an Idempotency-Key: a retry after an outage
    is the same request. A stream that ends without ``[DONE]`` (a worker died
    mid-answer, the database restarted) is left to ``result_of``, a reader that
    keeps the request from being cancelled as abandoned."""
    stream = outcome.mode == "v1-stream"
    messages = [{"role": "user", "content": outcome.prompt}]
    body = {"model": "echo", "messages": messages, **outcome.params}
    headers = {"Idempotency-Key": outcome.key}
    while time.monotonic() < deadline:
        try:
            if stream:
                received = Received()
                outcome.request_id = await chat_read(
                    client, {**body, "stream": True}, headers, received
                )
                if received.final == {"event": "complete"}:
                    outcome.stream = received
                return
            response = await client.post(
                "/v1/chat/completions", json=body, headers=headers, timeout=120
            )
        except httpx.HTTPStatusError as refused:
            response = refused.response
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        if response.status_code in (429, 503):
            await back_off(outcome, response)
            continue
        # 200, or a request that ended without an answer (its error, with its id).
        outcome.request_id = response.headers["x-orchestrator-request-id"]
        return


async def one_client(
    cluster: Cluster,
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    outcome: Outcome,
    deadline: float,
) -> None:
    if outcome.mode == "ws":
        ws_url = cluster.base_url.replace("http", "ws") + "/api/v1/ws"
        for _ in range(20):
            try:
                outcome.stream = await ws_run(
                    ws_url, cluster.base_url, outcome.prompt, drop_after=2, extra=outcome.params
                )
                outcome.request_id = outcome.stream.final and outcome.stream.final.get("request_id")
                break
            except Exception:  # an outage during the WS exchange: try again
                await asyncio.sleep(0.5)
    elif outcome.mode.startswith("v1"):
        await chat(client, outcome, deadline)
    else:
        outcome.request_id = await submit(client, outcome, deadline)
        if outcome.request_id is None:
            return
        if outcome.mode == "resubmit":
            again = await submit(client, outcome, deadline)
            if again != outcome.request_id:
                outcome.duplicate_ids.add(str(again))
        if outcome.mode == "sse":
            await follow_sse(client, outcome)
    if outcome.request_id:
        # (a WebSocket client is anonymous: its requests are not the key's)
        reader = anonymous if outcome.mode == "ws" else client
        outcome.final = await result_of(reader, outcome.request_id)


def plan(count: int) -> list[Outcome]:
    outcomes = []
    for i in range(count):
        words = " ".join(f"c{i}w{j}" for j in range(random.randint(5, 40)))
        roll = random.random()
        modes = [(0.1, "resubmit"), (0.35, "sse"), (0.45, "ws"), (0.55, "v1"), (0.65, "v1-stream")]
        mode = next((name for share, name in modes if roll < share), "poll")
        cached = random.random() < CACHED_SHARE
        prompt = random.choice(POOL) if cached else f"chaos {i}: {words}"
        outcomes.append(Outcome(prompt=prompt, mode=mode, key=str(uuid.uuid4()), cached=cached))
    return outcomes


# --- the chaos -------------------------------------------------------------------------


async def chaos(cluster: Cluster, stats: Stats, duration: float, kill_every: float, query) -> None:  # type: ignore[no-untyped-def]
    began = time.monotonic()
    redis_done = postgres_done = False
    next_kill = began + kill_every
    recoveries: list[asyncio.Task[None]] = []
    while (elapsed := time.monotonic() - began) < duration:
        cluster.sample_rss(stats)
        if time.monotonic() >= next_kill:
            held = await asyncio.to_thread(query.processing_snapshot)
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill_random_worker)
            stats.kills += 1
            stats.in_flight_at_kills += len(held)
            recoveries.append(asyncio.create_task(measure_recovery(stats, query, held, killed_at)))
            next_kill += kill_every
        if not redis_done and elapsed > duration / 3:
            redis_done = True
            await asyncio.to_thread(restart_redis)
        if not postgres_done and elapsed > 2 * duration / 3:
            postgres_done = True
            await asyncio.to_thread(stop_postgres)
            await asyncio.sleep(2)
            await asyncio.to_thread(start_postgres)
        await asyncio.sleep(0.2)
    await asyncio.gather(*recoveries)


async def measure_recovery(stats: Stats, query, held, killed_at: float) -> None:  # type: ignore[no-untyped-def]
    """Seconds until every request processing at the kill is running again or done."""
    while time.monotonic() - killed_at < 60:
        try:
            if await asyncio.to_thread(query.all_recovered, held):
                stats.recovery_seconds.append(time.monotonic() - killed_at)
                return
        except Exception:
            pass  # the database may be restarting
        await asyncio.sleep(0.2)
    stats.recovery_seconds.append(float("inf"))


class Query:
    """Read-only looks at the chaos database (its own connection, autocommit)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.psycopg = psycopg

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def processing_snapshot(self) -> dict[str, tuple]:
        """Requests running at a kill: id -> (attempt, lease expiry)."""
        try:
            rows = self._rows(
                "SELECT id::text, attempt, lease_expires_at FROM inference_inferencerequest "
                "WHERE status = 'processing'"
            )
        except Exception:
            return {}
        return {rid: (attempt, lease) for rid, attempt, lease in rows}

    def all_recovered(self, held: dict[str, tuple]) -> bool:
        """Each is done, re-claimed (a newer attempt) or still heartbeating (a
        surviving worker renewed its lease since the kill: a dead one cannot)."""
        if not held:
            return True
        rows = self._rows(
            "SELECT id::text, attempt, status, lease_expires_at "
            "FROM inference_inferencerequest WHERE id::text = ANY(%s)",
            (list(held),),
        )
        return all(
            status != "processing" or attempt > held[rid][0] or (lease and lease > held[rid][1])
            for rid, attempt, status, lease in rows
        )

    def consumed(self, prefix: str) -> tuple[int, int]:
        """The key's finished rows: (their tokens, the tokens billed to its budget:
        rows that ran a model, not cache hits or followers)."""
        rows = self._rows(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
            "COALESCE(SUM(prompt_tokens + completion_tokens) FILTER (WHERE cache_status "
            "NOT IN ('hit', 'collapsed') AND budget_period IS NOT NULL), 0) "
            "FROM inference_inferencerequest WHERE finished_at IS NOT NULL AND api_key_id = %s",
            (prefix,),
        )
        return int(rows[0][0]), int(rows[0][1])

    def ledger(self, prefix: str) -> int:
        """What the key's budget holds as used: its ledgers plus the rows not folded yet."""
        folded = self._rows(
            "SELECT COALESCE(SUM(tokens), 0) FROM inference_budgetledger WHERE api_key_id = %s",
            (prefix,),
        )
        live = self._rows(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) "
            "FROM inference_inferencerequest WHERE api_key_id = %s AND budget_period IS NOT NULL "
            "AND NOT budget_settled AND cache_status NOT IN ('hit', 'collapsed')",
            (prefix,),
        )
        return int(folded[0][0]) + int(live[0][0])

    def requests(self) -> list[Row]:
        rows = self._rows(
            "SELECT id::text, prompt, status, result, error_code, attempt, cache_status, "
            "cache_source_id::text FROM inference_inferencerequest"
        )
        return [Row(*row) for row in rows]

    def chunks(self) -> dict[str, list[tuple[int, int, str]]]:
        """Each request's stored stream: (seq, attempt, text) in seq order."""
        streams: dict[str, list[tuple[int, int, str]]] = {}
        rows = self._rows(
            "SELECT request_id::text, seq, attempt, text FROM inference_streamchunk "
            "ORDER BY request_id, seq"
        )
        for request_id, seq, attempt, text in rows:
            streams.setdefault(request_id, []).append((seq, attempt, text))
        return streams


class Row(NamedTuple):
    id: str
    prompt: str
    status: str
    result: str | None
    error_code: str
    attempt: int
    cache_status: str
    cache_source: str | None


@dataclass
class UsageCheck:
    """Usage summed three ways must agree with the rows: the usage API's total,
    and the budget ledger of the key (folded and not), however often a request
    was re-run after a kill."""

    rows_total: int
    api_total: int
    billed: int
    ledger: int
    folded_requests: int

    @property
    def ok(self) -> bool:
        return self.rows_total == self.api_total and self.billed == self.ledger

    def rows(self) -> list[tuple[str, object]]:
        return [
            ("USAGE: API total vs the rows (tokens)", f"{self.api_total} vs {self.rows_total}"),
            (
                "BUDGET: ledger vs billed rows (tokens; requests folded)",
                f"{self.ledger} vs {self.billed} ({self.folded_requests})",
            ),
        ]


async def usage_check(cluster: Cluster, query: Query, key: str) -> UsageCheck:
    """After a lease has passed, one more submit folds the key's finished requests
    into its ledger; then the three sums."""
    prefix = key.partition(".")[0]
    await asyncio.sleep(float(cluster.env["ORCHESTRATOR_LEASE_SECONDS"]) + 0.5)
    async with httpx.AsyncClient(
        base_url=cluster.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        folding = await client.post("/api/v1/infer", json={"prompt": "fold", "max_tokens": 1})
        await result_of(client, folding.json()["request_id"])
        reported = await client.get("/api/v1/usage", params={"group_by": "key"})
    rows_total, billed = query.consumed(prefix)
    api_total = sum(
        row["prompt_tokens"] + row["completion_tokens"] for row in reported.json()["rows"]
    )
    folded = query._rows(
        "SELECT COUNT(*) FROM inference_inferencerequest WHERE api_key_id = %s AND budget_settled",
        (prefix,),
    )[0][0]
    return UsageCheck(rows_total, api_total, billed, query.ledger(prefix), int(folded))


# --- the verdict -----------------------------------------------------------------------


def stored_once(row: Row, stream: list[tuple[int, int, str]]) -> bool:
    """Seqs 0..n-1, no gap or repeat, all of the row's final attempt, spelling its result."""
    return (
        [seq for seq, _, _ in stream] == list(range(len(stream)))
        and all(attempt == row.attempt for _, attempt, _ in stream)
        and "".join(text for _, _, text in stream) == row.result
    )


def verdict(
    outcomes: list[Outcome],
    rows: list[Row],
    chunks: dict[str, list[tuple[int, int, str]]],
    stats: Stats,
    attempted: int,
) -> tuple[list[tuple[str, object]], bool]:
    by_id = {row.id: row for row in rows}
    done = {row.id: row for row in rows if row.status == "completed"}
    # Repeated prompts are shared by design: a prompt's rows beyond the clients
    # that sent it are the duplicates.
    sent = Counter(o.prompt for o in outcomes)
    per_prompt = Counter(row.prompt for row in rows)
    accepted = [o for o in outcomes if o.request_id]
    lost = [
        o
        for o in accepted
        if o.request_id not in by_id or by_id[o.request_id].status in ("pending", "processing")
    ]
    duplicated = sum(max(count - sent[prompt], 0) for prompt, count in per_prompt.items()) + sum(
        len(o.duplicate_ids) for o in outcomes
    )
    unexpected = [
        o for o in accepted if o.request_id in done and done[o.request_id].result != o.prompt
    ]
    # A hit or a follower answers with its source's result (itself a completed row).
    cache_mismatches = [
        row.id
        for row in done.values()
        if row.cache_status in ("hit", "collapsed")
        and (row.cache_source not in done or done[row.cache_source].result != row.result)
    ]
    # Exactly once, in the database: each completed request's chunks (a
    # follower's mirrored copy and a hit's copied one included).
    chunk_errors = [row.id for row in done.values() if not stored_once(row, chunks.get(row.id, []))]

    def expected_text(row: Row) -> str | None:
        """What a stream must spell: its result source's text for a hit or a
        follower, else the prompt (the echo backend's answer)."""
        if row.cache_status in ("hit", "collapsed"):
            return done[row.cache_source].result if row.cache_source in done else None
        return row.prompt

    # Streams read back (after resets): the expected text, and chunk numbers
    # 0..n-1 with no gap or repeat where the transport shows them (/v1 does not).
    mismatches = [
        o
        for o in accepted
        if o.stream is not None
        and o.request_id in done
        and (
            o.stream.text != expected_text(done[o.request_id])
            or o.stream.seqs not in ([], list(range(len(o.stream.seqs))))
        )
    ]
    statuses = Counter(row.status for row in rows)
    caching = Counter(row.cache_status for row in done.values())
    failed_codes = Counter(row.error_code for row in rows if row.status == "failed")
    rejected = sum(o.rejections for o in outcomes)
    no_retry_after = sum(o.rejections_without_retry_after for o in outcomes)
    finite = [s for s in stats.recovery_seconds if s != float("inf")]
    table: list[tuple[str, object]] = [
        ("attempted", attempted),
        (
            "accepted (temperature-0 repeats)",
            f"{len(accepted)} ({sum(o.cached for o in accepted)})",
        ),
        ("rejected (429/503)", rejected),
        ("rejected without Retry-After", no_retry_after),
        ("completed", statuses["completed"]),
        (
            "completed hit / collapsed / stored (detached)",
            f"{caching['hit']} / {caching['collapsed']} / {caching['stored']} "
            f"({caching['detached']})",
        ),
        # Kills that landed on a generation others were sharing.
        (
            "collapsed onto a leader re-run after a kill",
            sum(
                row.cache_status == "collapsed"
                and row.cache_source in done
                and done[row.cache_source].attempt > 1
                for row in done.values()
            ),
        ),
        ("failed (by code)", dict(failed_codes) or 0),
        ("cancelled", statuses["cancelled"]),
        ("expired", statuses["expired"]),
        ("LOST", len(lost)),
        ("DUPLICATED", duplicated),
        ("UNEXPECTED", len(unexpected)),
        ("CACHE MISMATCHES (result != source's)", len(cache_mismatches)),
        ("CHUNK ERRORS (seqs, attempt, text)", len(chunk_errors)),
        ("re-executions (extra attempts)", sum(max(row.attempt - 1, 0) for row in rows)),
        ("visible resets (stream clients)", sum(o.stream.resets for o in outcomes if o.stream)),
        (
            "through /v1 (streams read to [DONE])",
            f"{sum(o.mode.startswith('v1') for o in accepted)} "
            f"({sum(o.mode == 'v1-stream' and o.stream is not None for o in accepted)})",
        ),
        ("STREAM MISMATCHES", len(mismatches)),
        (
            "worker kills (requests running at the kills)",
            f"{stats.kills} ({stats.in_flight_at_kills})",
        ),
        ("max recovery per kill (s)", f"{max(finite):.2f}" if finite else "-"),
        ("unrecovered kills", len(stats.recovery_seconds) - len(finite)),
        (
            "peak RSS web / worker (MB)",
            f"{stats.peak_rss_kb['web'] / 1024:.0f} / {stats.peak_rss_kb['worker'] / 1024:.0f}",
        ),
    ]
    # The ids behind any failure, for the report (and the database left behind).
    for name, ids in [
        ("lost", [o.request_id for o in lost]),
        ("unexpected", [o.request_id for o in unexpected]),
        ("cache mismatch", cache_mismatches),
        ("chunk error", chunk_errors),
        ("stream mismatch", [o.request_id for o in mismatches]),
    ]:
        if ids:
            print(f"{name}: {', '.join(str(i) for i in ids[:10])}", file=sys.stderr)
    ok = not (lost or duplicated or unexpected or mismatches or cache_mismatches or chunk_errors)
    ok = ok and no_retry_after == 0 and len(finite) == len(stats.recovery_seconds)
    return table, ok


async def drive(
    cluster: Cluster, outcomes: list[Outcome], stats: Stats, args, query, key: str
) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + args.duration + 120
    limits = httpx.Limits(max_connections=200)
    # REST and /v1 clients use a key with a budget (WebSocket clients stay
    # anonymous): its ledger must come out equal to what its rows consumed.
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(
            base_url=cluster.base_url, timeout=30, limits=limits, headers=headers
        ) as client,
        httpx.AsyncClient(base_url=cluster.base_url, timeout=30, limits=limits) as anonymous,
    ):
        gap = args.duration * 0.8 / max(len(outcomes), 1)
        tasks = []
        chaos_task = asyncio.create_task(
            chaos(cluster, stats, args.duration, args.kill_every, query)
        )
        for outcome in outcomes:  # spread the arrivals over most of the run
            tasks.append(
                asyncio.create_task(one_client(cluster, client, anonymous, outcome, deadline))
            )
            await asyncio.sleep(gap)
        await chaos_task
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--kill-every", type=float, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    base = os.environ.get("CHAOS_DATABASE_SERVER", "postgres://postgres@127.0.0.1:5432")
    logs = ROOT / "var" / "chaos"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        "DATABASE_URL": f"{base}/{DATABASE}",
        "REDIS_URL": REDIS_URL,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ORCHESTRATOR_WORKER_MODE": "external",
        "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
        "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.02",
        "ORCHESTRATOR_ECHO_FAILURE_RATE": "0.05",
        "ORCHESTRATOR_BACKEND_BACKOFF_BASE_SECONDS": "0.05",
        "ORCHESTRATOR_LEASE_SECONDS": "3",
        "ORCHESTRATOR_REAP_INTERVAL_SECONDS": "0.5",
        "ORCHESTRATOR_POLL_INTERVAL_SECONDS": "0.5",
        "ORCHESTRATOR_STREAM_POLL_SECONDS": "1",
        "ORCHESTRATOR_MAX_ATTEMPTS": "10",  # kills every few seconds: keep retrying
        # Entries expire within the run, so the repeats keep electing new leaders
        # (and followers) under the kills instead of only hitting after a minute.
        "ORCHESTRATOR_CACHE_TTL_SECONDS": "5",
        **OPEN_ACCESS,
        "LOG_LEVEL": "WARNING",
    }
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    run_manage("migrate", "--noinput", "-v0", env=env)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    key = create_api_key(env, "--budget-tokens", str(10**12), "--budget-period", "month")
    cluster = Cluster(env, logs)
    stats = Stats()
    query = Query(env["DATABASE_URL"])
    outcomes = plan(args.requests)
    began = time.monotonic()
    try:
        cluster.start(workers=3)
        asyncio.run(drive(cluster, outcomes, stats, args, query, key))
        rows, chunks = query.requests(), query.chunks()
        usage = asyncio.run(usage_check(cluster, query, key))
    finally:
        cluster.stop()
    table, ok = verdict(outcomes, rows, chunks, stats, args.requests)
    table += usage.rows()
    ok = ok and usage.ok
    print(
        f"\nChaos: {args.requests} requests, {args.duration:.0f} s, a worker SIGKILLed every "
        f"{args.kill_every:.0f} s, Redis and PostgreSQL restarted once; "
        f"took {time.monotonic() - began:.0f} s\n"
    )
    print("| check | value |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
