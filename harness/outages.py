"""Stop and start this machine's PostgreSQL and Redis (the commands .ci/run uses)."""

from __future__ import annotations

import os
import subprocess
import time

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def _wait(check: list[str], up: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (subprocess.run(check, capture_output=True).returncode == 0) != up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check} never became {'up' if up else 'down'}")
        time.sleep(0.1)


def restart_redis() -> None:
    """Redis keeps nothing on disk here: a restart loses every channel and group."""
    stop_redis()
    start_redis()


def stop_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)
    _wait(["redis-cli", "-p", "6379", "ping"], up=False)


def start_redis() -> None:
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(REDIS_START, check=True)
    _wait(["redis-cli", "-p", "6379", "ping"], up=True)


def stop_postgres() -> None:
    subprocess.run([*_pg_cluster(), "stop", "-m", "fast"], check=True)
    _wait(["pg_isready", "-q", "-h", "127.0.0.1"], up=False)


def start_postgres() -> None:
    subprocess.run([*_pg_cluster(), "start"], check=True)
    _wait(["pg_isready", "-q", "-h", "127.0.0.1"], up=True)


def forget_dead_connections() -> None:
    """A Django process's pooled connections died with the server: drop them."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        close_pool = getattr(connection, "close_pool", None)
        if close_pool is not None:
            close_pool()
        connection.close()
