"""The README's JavaScript block, run as written in Chromium against a real server.

As ``make run`` serves it (DEBUG, no keys, the local model), once from an
anonymous page and once from a page where a staff user is logged in — there the
session cookie authenticates the POSTs, so Django wants the CSRF token the
snippet sends. Only the address changes. Every response the page gets must be
below 400, and each of the three transports must finish: the REST answer, the
WebSocket's ``result`` and the EventSource's ``complete``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from harness.processes import embedded_env, run_manage, serving
from tests.browser.test_chat_page import CHROMIUM
from tests.readme_blocks import README_URL, Block, blocks_to_run

pytestmark = pytest.mark.browser
PASSWORD = "a staff password for the README test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("readme-js")
    env = embedded_env(
        data_dir, ORCHESTRATOR_DEFAULT_BACKEND="local", ORCHESTRATOR_DEFAULT_MAX_TOKENS="32"
    )
    with serving(env, data_dir / "server.log", "runserver", "--noreload") as url:
        code = (
            "from django.contrib.auth.models import User; "
            f"User.objects.create_superuser('staff', 'staff@example.com', {PASSWORD!r})"
        )
        run_manage("shell", "-v", "0", "-c", code, env=env)
        yield url


@pytest.fixture
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser.new_page()
        browser.close()


def run_block(page: Page, url: str, block: Block, timeout: float = 45) -> list[list[Any]]:
    """Evaluate the block in ``page``; what it logged, once every transport finished."""
    logged: list[list[Any]] = []
    refused: list[str] = []
    errors: list[str] = []

    def log(message: ConsoleMessage) -> None:
        with contextlib.suppress(PlaywrightError):  # the page closed meanwhile
            logged.append([arg.json_value() for arg in message.args])

    page.on("console", log)
    page.on("response", lambda r: r.status >= 400 and refused.append(f"{r.status} {r.url}"))
    page.on("pageerror", lambda error: errors.append(str(error)))
    code = block.code.replace(README_URL, url)
    code = code.replace(README_URL.replace("http", "ws", 1), url.replace("http", "ws", 1))
    page.evaluate(f"async () => {{\n{code}\n}}")

    def seen(first: Any) -> list[list[Any]]:
        return [entry for entry in logged if entry and entry[0] == first]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        where = f"README line {block.line}: refused {refused}, errors {errors}, logged {logged}"
        assert not refused and not errors, where
        results = [e for e in logged if isinstance(e[0], dict) and e[0].get("type") == "result"]
        if seen("Answer:") and results and seen("Done:"):
            break
        page.wait_for_timeout(200)
    else:
        raise AssertionError(f"README line {block.line} did not finish: {logged}")
    answer, done = seen("Answer:")[0][1], seen("Done:")[0][1]
    assert isinstance(answer, str) and answer.strip(), logged
    assert isinstance(done, str) and done.strip(), logged
    tokens = "".join(entry[1]["data"] for entry in seen("Token:"))
    # The EventSource's tokens make up the result (which Post tidies of whitespace).
    assert tokens.split() == done.split(), (tokens, done)
    socket = [e[0] for e in logged if isinstance(e[0], dict)]
    assert socket[0]["type"] == "ack" and socket[-1]["status"] == "completed", socket
    return logged


@pytest.mark.parametrize("block", blocks_to_run("javascript"), ids=lambda b: b.id)
def test_the_readme_javascript_runs_anonymously(page: Page, server: str, block: Block) -> None:
    page.goto(f"{server}/api/docs/")  # any page of ours: the snippet's origin
    run_block(page, server, block)


@pytest.mark.parametrize("block", blocks_to_run("javascript"), ids=lambda b: b.id)
def test_the_readme_javascript_runs_logged_in_as_staff(
    page: Page, server: str, block: Block
) -> None:
    page.goto(f"{server}/admin/login/?next=/admin/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server}/admin/")
    assert any(c["name"] == "sessionid" for c in page.context.cookies())
    run_block(page, server, block)


def test_the_readme_has_javascript_to_run() -> None:
    assert blocks_to_run("javascript")
