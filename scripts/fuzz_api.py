"""Fuzz the live API against its own OpenAPI schema with schemathesis.

    .venv/bin/python -m scripts.fuzz_api [--max-examples 25] [--seed 20261127]

Starts the production-like server (`manage.py serve`, DEBUG off, keys required,
SQLite and the embedded worker in a temporary directory), creates an API key,
then runs schemathesis over every operation of /api/schema/ twice: with the key
and without one. All checks are on (no server errors; status codes, content
types, headers and bodies conform to the schema; auth is enforced...). The seed
and example budget are fixed so that a CI run is reproducible and bounded.
Exits non-zero if either run finds a failure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.processes import create_api_key, embedded_env, serving

ROOT = Path(__file__).resolve().parent.parent


def server_env(data_dir: Path) -> dict[str, str]:
    return embedded_env(
        data_dir,
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(40),
        ALLOWED_HOSTS="127.0.0.1",
        # The fuzzer is one client sending thousands of requests: rate limits would
        # turn most of them into (correct, documented) 429s and hide the rest.
        ORCHESTRATOR_REQUESTS_PER_MINUTE="0",
        ORCHESTRATOR_MAX_IN_FLIGHT="0",
        # ...and its checks of wrong credentials would trip the per-address limit.
        ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE="0",
        # Echo only: a request on the local model may stream for longer than the
        # fuzzer's read timeout when it opens that request's SSE stream.
        ORCHESTRATOR_BACKENDS=json.dumps({"echo": {"class": "pipeline.backends.echo.EchoBackend"}}),
        # Small batches: 1,000-prompt batches would queue so much work that a request
        # with a one-second deadline (the fuzzer tries the least) expires waiting,
        # and /v1 answers that with its documented 504.
        ORCHESTRATOR_MAX_BATCH="8",
    )


def schemathesis(url: str, args: argparse.Namespace, *extra: str) -> int:
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(ROOT / "scripts" / "schemathesis.toml"),
        "run",
        f"{url}/api/schema/",
        "--checks",
        "all",
        # The built-in positive-data check, less the refusals made by design
        # (scripts/schemathesis_hooks.py), replaces it.
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "--request-timeout",
        "10",
        "--workers",
        "1",
        *extra,
    ]
    shown = [c if "Bearer" not in c else "'Authorization: Bearer …'" for c in command]
    print("$", " ".join(shown))
    return subprocess.run(command, cwd=ROOT).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as data_dir:
        env = server_env(Path(data_dir))
        log = Path(data_dir) / "web.log"
        with serving(env, log) as url:
            key = create_api_key(env, "--manage-documents")
            with_key = schemathesis(url, args, "--header", f"Authorization: Bearer {key}")
            without_key = schemathesis(url, args)
        if with_key or without_key:
            print(log.read_text()[-5000:])
    print(f"schemathesis with a key: exit {with_key}; without: exit {without_key}")
    return 1 if with_key or without_key else 0


if __name__ == "__main__":
    sys.exit(main())
