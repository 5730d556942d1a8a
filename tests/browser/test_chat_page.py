"""The chat page in a real browser: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from harness.processes import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
WORDS = 40
PROMPT = " ".join(f"word{i}" for i in range(WORDS))  # ~2 s at the live server's pace


@pytest.fixture
def page(live_server_url: str) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 390, "height": 800})  # a phone
        page.goto(live_server_url)
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        yield page
        browser.close()


def ask(page: Page, prompt: str):  # type: ignore[no-untyped-def]
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    return page.locator("li.msg.assistant").last


def test_tokens_stream_into_the_page_then_the_answer_completes(page: Page) -> None:
    answer = ask(page, PROMPT)
    # Part of the answer is on screen while the request is still processing.
    page.wait_for_function(
        """el => el.dataset.status === 'processing' && Number(el.dataset.tokens || 0) >= 3""",
        arg=answer.element_handle(),
    )
    partial = answer.locator(".body").inner_text()
    assert 0 < len(partial) < len(PROMPT)
    expect(answer).to_have_attribute("data-status", "completed", timeout=20_000)
    expect(answer.locator(".body")).to_have_text(PROMPT)
    assert answer.get_attribute("data-tokens") == str(WORDS)
    assert len(answer.locator(".rid").inner_text()) == 8
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)


def test_a_dropped_socket_reconnects_and_the_answer_completes_exactly(page: Page) -> None:
    answer = ask(page, PROMPT)
    page.wait_for_function("el => Number(el.dataset.tokens || 0) >= 5", arg=answer.element_handle())
    page.evaluate("window.chatDebug.dropSocket()")
    expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=10_000)
    expect(answer).to_have_attribute("data-status", "completed", timeout=20_000)
    # Every token arrived exactly once across the two sockets.
    assert answer.get_attribute("data-tokens") == str(WORDS)
    expect(answer.locator(".body")).to_have_text(PROMPT)


def test_cancel_stops_a_running_answer(page: Page) -> None:
    answer = ask(page, PROMPT)
    page.wait_for_function("el => Number(el.dataset.tokens || 0) >= 2", arg=answer.element_handle())
    answer.locator(".cancel").click()
    expect(answer).to_have_attribute("data-status", "cancelled", timeout=10_000)


def test_a_reload_continues_the_session(page: Page) -> None:
    answer = ask(page, "remember this turn")
    expect(answer).to_have_attribute("data-status", "completed", timeout=20_000)
    session = page.locator("#session-id").inner_text()
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    assert page.locator("#session-id").inner_text() == session
    expect(page.locator("li.msg.user").last).to_have_text("remember this turn")
    restored = page.locator("li.msg.assistant").last
    expect(restored.locator(".body")).to_have_text("remember this turn")
    follow_up = ask(page, "and this one")
    expect(follow_up).to_have_attribute("data-status", "completed", timeout=20_000)
