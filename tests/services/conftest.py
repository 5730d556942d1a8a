"""The service suite: PostgreSQL + Redis, web and workers as separate processes.

Run by ``make test-services`` (and CI) with DATABASE_URL and REDIS_URL set. It
fails, never skips, when they are missing or unreachable: a green run must mean
the scaled mode really worked.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from harness.processes import OPEN_ACCESS, free_port, manage, stop, wait_until_serving


def _require_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(f"{name} must be set for the service suite (see `make test-services`)")
    return value


@dataclass
class Stack:
    """`serve` (web) on PostgreSQL + Redis, plus any number of worker processes."""

    base_url: str
    env: dict[str, str]
    logs: Path
    web: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0  # workers ever started: names each one's log

    def start_worker(
        self, concurrency: int = 50, token_delay: float = 0.0, metrics_port: int = 0
    ) -> subprocess.Popen[bytes]:
        env = {**self.env, "ORCHESTRATOR_ECHO_TOKEN_DELAY": str(token_delay)}
        log = self.logs / f"worker-{self.started}.log"
        self.started += 1
        args = ["--concurrency", str(concurrency), "--metrics-port", str(metrics_port)]
        worker = manage("run_pipeline", *args, env=env, log=log)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            stop(worker)
        self.workers.clear()


def _test_database_url(base_url: str) -> str:
    """pytest-django's (fresh, migrated) test database, shared with the processes."""
    return base_url.rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]


def _ensure_test_database(django_db_blocker: Any) -> str | None:
    """pytest-django creates the test database only if a collected test is marked
    ``django_db``; a run of one services module may have none, and the processes
    must never be pointed at the real database. Returns the original name when
    the database was created here (to destroy it afterwards)."""
    original = connection.settings_dict["NAME"]
    if original.startswith("test_"):
        return None
    with django_db_blocker.unblock():
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    return str(original)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, django_db_setup: None, django_db_blocker: Any
) -> Iterator[Stack]:
    _require_env("DATABASE_URL")
    created_here = _ensure_test_database(django_db_blocker)
    database_url = _test_database_url(os.environ["DATABASE_URL"])
    redis_url = _require_env("REDIS_URL")
    redis.Redis.from_url(redis_url).flushdb()
    logs = tmp_path_factory.mktemp("service-logs")
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "ORCHESTRATOR_WORKER_MODE": "external",
        "ORCHESTRATOR_DEFAULT_BACKEND": "echo",
        "ORCHESTRATOR_LEASE_SECONDS": "3",
        "ORCHESTRATOR_REAP_INTERVAL_SECONDS": "0.5",
        "ORCHESTRATOR_POLL_INTERVAL_SECONDS": "1",
        "ORCHESTRATOR_STREAM_POLL_SECONDS": "1",
        "ORCHESTRATOR_FEATURES_REFRESH_SECONDS": "1",
        **OPEN_ACCESS,
    }
    port = free_port()
    web = manage("serve", "--host", "127.0.0.1", "--port", str(port), env=env, log=logs / "web.log")
    the_stack = Stack(base_url=f"http://127.0.0.1:{port}", env=env, logs=logs, web=web)
    try:
        wait_until_serving(the_stack.base_url, web)
        yield the_stack
    finally:
        the_stack.stop_workers()
        stop(web)
        if created_here:
            with django_db_blocker.unblock():
                connection.creation.destroy_test_db(created_here, verbosity=0)


@pytest.fixture
def db_access(django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """ORM access from the test process to the stack's (real, shared) database."""
    with django_db_blocker.unblock():
        yield
