"""The two configurations under test, started as real processes.

* **embedded**: one ``manage.py serve`` (uvicorn) hosting the pipeline worker,
  SQLite (WAL) and the in-memory channel layer: what ``make run`` gives.
* **scaled**: ``manage.py serve`` x2 and ``manage.py run_pipeline`` x2 on
  PostgreSQL + Redis: what the README's "Running scaled" section describes.

Every stack starts from a freshly migrated database copied from a template
(migrating once per configuration, not once per stack), so one scenario's
backlog never leaks into the next measurement. ``Workspace`` owns everything
the bench creates and removes it on exit, failure or Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from harness.processes import OPEN_ACCESS, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
# The tree whose manage.py the stacks run: this one, or another revision's checkout
# (``bench.ab`` measures two revisions with the same bench code).
SERVER_TREE = Path(os.environ.get("BENCH_SERVER_TREE") or ROOT)
PG_SERVER = "postgres://postgres@127.0.0.1:5432"
# Per run: a server left over from a killed run can never touch this run's data.
BENCH_DB = f"orchestrator_bench_{os.getpid()}"
TEMPLATE_DB = f"orchestrator_bench_template_{os.getpid()}"
REDIS_URL = "redis://127.0.0.1:6379/14"
COUNT_ACTIVE = (
    "SELECT count(*) FROM inference_inferencerequest WHERE status IN ('pending', 'processing')"
)

# Production-like settings shared by both configurations: the echo backend at
# 0 ms/token (the orchestration cost alone), an admission cap far above what a
# run can queue (so the COUNT still runs but never refuses), quiet logs.
BASE_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(40),
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
    "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0",
    "ORCHESTRATOR_MAX_PENDING": "1000000",
    "ORCHESTRATOR_CONCURRENCY": "32",
    "ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": "2",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",  # worker logs announce readiness
    # Every bench client is one caller (127.0.0.1, no key): API keys stay off as
    # in development (DEBUG=false would require them), and the per-caller limits
    # are off, or they would cap the load the bench offers.
    **OPEN_ACCESS,
}


@dataclass
class Stack:
    """A running configuration: web processes, worker processes, its database."""

    config: str
    env: dict[str, str]
    database: str  # a PostgreSQL URL or a SQLite file path
    webs: list[subprocess.Popen[bytes]]
    web_urls: list[str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        named = {f"web{i}": web for i, web in enumerate(self.webs)}
        if self.config == "embedded":
            named = {"server (web+worker)": self.webs[0]}
        return named | {f"worker{i}": worker for i, worker in enumerate(self.workers)}

    def rss_mb(self) -> dict[str, float]:
        return {name: rss_mb(process.pid) for name, process in self.processes().items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far by role: web, worker (embedded: all in web), postgres
        (every backend on the box: the bench is the only big client)."""
        used = {
            "web": sum(cpu_seconds(process.pid) for process in self.webs),
            "worker": sum(cpu_seconds(process.pid) for process in self.workers),
        }
        if self.database.startswith("postgres"):
            used["postgres"] = sum(cpu_seconds(pid) for pid in pids_named("postgres"))
        return used

    def query(self, sql: str) -> list[tuple]:  # type: ignore[type-arg]
        """Read the stack's database directly (the bench checks nothing got lost)."""
        if self.database.startswith("postgres"):
            with psycopg.connect(self.database, autocommit=True) as conn:
                return conn.execute(sql).fetchall()
        with contextlib.closing(sqlite3.connect(self.database, timeout=30)) as conn:
            return conn.execute(sql).fetchall()

    def status_counts(self) -> dict[str, int]:
        rows = self.query("SELECT status, count(*) FROM inference_inferencerequest GROUP BY 1")
        return {str(status): int(count) for status, count in rows}

    def wait_drained(self, timeout: float) -> float:
        """Seconds until no request is pending or processing (TimeoutError after)."""
        began = time.monotonic()
        while self.query(COUNT_ACTIVE)[0][0]:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"{self.config}: requests still active after {timeout:.0f} s")
            for process in self.processes().values():
                if process.poll() is not None:
                    raise RuntimeError(f"{self.config}: a process exited ({process.args!r})")
            time.sleep(0.2)
        return time.monotonic() - began


def check_services() -> None:
    """Fail at once, and say why, when the scaled mode's services are down."""
    try:
        psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        raise SystemExit(
            f"The scaled configuration needs PostgreSQL at {PG_SERVER} and Redis at "
            f"{REDIS_URL} ({exc}); start them (see .ci/run) or run --only f"
        ) from exc


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def die_with_parent() -> None:
    """In the child: SIGTERM when the bench dies, even by SIGKILL (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    cwd: Path = ROOT,
    unset: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """``argv`` with ``env`` over this environment (less ``unset``), output to
    ``log``; unlike ``harness.processes.spawn`` it cannot outlive the bench."""
    environment = {k: v for k, v in os.environ.items() if k not in unset} | env
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def manage(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``manage.py <args>`` of the server tree, output to ``log``."""
    return spawn([sys.executable, "manage.py", *args], env, log, cwd=SERVER_TREE)


def run_manage(*args: str, env: dict[str, str]) -> None:
    """``manage.py <args>`` of the server tree, to its end (migrations)."""
    command = [sys.executable, "manage.py", *args]
    subprocess.run(command, cwd=SERVER_TREE, env={**os.environ, **env}, check=True)


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """SIGTERM every process at once, then wait (SIGKILL stragglers)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}; see {log}")
        time.sleep(0.1)
    raise TimeoutError(f"{process.args!r} did not print {text!r} in {timeout:.0f} s; see {log}")


class Workspace:
    """Temporary files, template databases and running stacks of one bench run."""

    def __init__(self, logs: Path) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
        self.logs = logs
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        self.templates: dict[str, str] = {}
        self.started = 0
        self.running: list[subprocess.Popen[bytes]] = []

    def close(self) -> None:
        stop_all(self.running)
        self.running.clear()
        if "scaled" in self.templates:
            with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
                for name in (BENCH_DB, TEMPLATE_DB):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            redis.Redis.from_url(REDIS_URL).flushdb()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @contextlib.contextmanager
    def stack(
        self, config: str, env: dict[str, str] | None = None, webs: int = 2, workers: int = 2
    ) -> Iterator[Stack]:
        """A fresh ``config`` stack; ``webs``/``workers`` apply to the scaled one."""
        self.started += 1
        data_dir = self.tmp / f"stack-{self.started}"
        data_dir.mkdir()
        full_env = {**BASE_ENV, "ORCHESTRATOR_DATA_DIR": str(data_dir), **(env or {})}
        if config == "embedded":
            stack = self._embedded(full_env, data_dir)
        else:
            stack = self._scaled(full_env, webs, workers)
        try:
            yield stack
        finally:
            processes = [*stack.webs, *stack.workers]
            stop_all(processes)
            self.running = [p for p in self.running if p not in processes]

    def _embedded(self, env: dict[str, str], data_dir: Path) -> Stack:
        env |= {"DATABASE_URL": "", "REDIS_URL": "", "ORCHESTRATOR_WORKER_MODE": "embedded"}
        if "embedded" not in self.templates:
            template_dir = self.tmp / "template"
            template_dir.mkdir()
            run_manage(
                "migrate",
                "--noinput",
                "-v0",
                env={**env, "ORCHESTRATOR_DATA_DIR": str(template_dir)},
            )
            self.templates["embedded"] = str(template_dir / "db.sqlite3")
        database = data_dir / "db.sqlite3"
        shutil.copy(self.templates["embedded"], database)
        web, url = self._serve(env, "embedded-web")
        return Stack("embedded", env, str(database), [web], [url])

    def _scaled(self, env: dict[str, str], webs: int, workers: int) -> Stack:
        database = f"{PG_SERVER}/{BENCH_DB}"
        env |= {
            "DATABASE_URL": database,
            "REDIS_URL": REDIS_URL,
            "ORCHESTRATOR_WORKER_MODE": "external",
        }
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            if "scaled" not in self.templates:
                drop_stale_databases(conn)
                conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
                self.templates["scaled"] = TEMPLATE_DB
                template_url = f"{PG_SERVER}/{TEMPLATE_DB}"
                run_manage("migrate", "--noinput", "-v0", env={**env, "DATABASE_URL": template_url})
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{BENCH_DB}" TEMPLATE "{TEMPLATE_DB}"')
        redis.Redis.from_url(REDIS_URL).flushdb()
        started = [self._serve(env, f"scaled-web{i}", wait=False) for i in range(webs)]
        worker_processes = [self._worker(env, i) for i in range(workers)]
        for web, url in started:
            wait_until_serving(url, web, timeout=60)
        for i, worker in enumerate(worker_processes):
            log = self.logs / f"{self.started}-scaled-worker{i}.log"
            wait_for_line(log, "running", worker, timeout=60)
        return Stack(
            "scaled",
            env,
            database,
            [web for web, _ in started],
            [url for _, url in started],
            worker_processes,
        )

    def _serve(
        self, env: dict[str, str], name: str, wait: bool = True
    ) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        log = self.logs / f"{self.started}-{name}.log"
        web = manage("serve", "--host", "127.0.0.1", "--port", str(port), env=env, log=log)
        self.running.append(web)
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_until_serving(url, web, timeout=60)
        return web, url

    def _worker(self, env: dict[str, str], index: int) -> subprocess.Popen[bytes]:
        log = self.logs / f"{self.started}-scaled-worker{index}.log"
        worker = manage("run_pipeline", env=env, log=log)
        self.running.append(worker)
        return worker


def drop_stale_databases(conn: psycopg.Connection) -> None:
    """Drop the databases of bench runs that were SIGKILLed (their pid is gone)."""
    names = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'orchestrator\\_bench\\_%'"
    ).fetchall()
    for (name,) in names:
        pid = name.rpartition("_")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raise_open_files(wanted: int) -> int:
    """Raise RLIMIT_NOFILE for this process and the servers it starts (children
    inherit it): 10,000 WebSockets need 10,000 descriptors on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def environment_summary() -> str:
    keys = ("ORCHESTRATOR_CONCURRENCY", "ORCHESTRATOR_MAX_PENDING", "DEBUG", "LOG_LEVEL")
    settings = ", ".join(f"{key}={BASE_ENV[key]}" for key in keys)
    return (
        f"{settings}; API keys and per-caller limits off; "
        f"echo backend at {BASE_ENV['ORCHESTRATOR_ECHO_TOKEN_DELAY']} s/token"
    )
