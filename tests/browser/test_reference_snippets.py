"""The original's JavaScript snippets (reference/phase3-web-api.md), run in Chromium.

Only the address changes (the original served :8080). The WebSocket one-liners
are run the way the reference shows them: typed into a console line by line.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.browser.test_chat_page import CHROMIUM

pytestmark = pytest.mark.browser

INFER_REST = """
async function inferRest(prompt) {
  const response = await fetch('http://localhost:8080/api/v1/infer', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt })
  });

  const { request_id } = await response.json();

  // Poll for result
  while (true) {
    const result = await fetch(
      `http://localhost:8080/api/v1/result/${request_id}`
    );

    if (result.status === 200) {
      return (await result.json()).result;
    }

    await new Promise(r => setTimeout(r, 1000));
  }
}
"""


@pytest.fixture
def page(live_server_url: str) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.goto(f"{live_server_url}/api/docs/")  # any page of ours: same origin
        yield page
        browser.close()


def test_the_fetch_poll_snippet_returns_the_result(page: Page, live_server_url: str) -> None:
    code = INFER_REST.replace("http://localhost:8080", live_server_url)
    result = page.evaluate(f"async () => {{ {code}; return await inferRest('What is Rust?'); }}")
    assert result == "What is Rust?"


def test_the_websocket_snippet_logs_ack_and_result(page: Page, live_server_url: str) -> None:
    ws_url = live_server_url.replace("http://", "ws://") + "/api/v1/ws"
    logged: list[dict] = []
    page.on("console", lambda message: logged.append(message.args[0].json_value()))
    # The three console lines, as written (a function body so Playwright runs
    # each statement rather than calling the handler it evaluates to).
    page.evaluate(f"() => {{ window.ws = new WebSocket('{ws_url}'); }}")
    page.evaluate("() => { ws.onmessage = e => console.log(JSON.parse(e.data)); }")
    page.wait_for_function("ws.readyState === WebSocket.OPEN")
    is_result = lambda message: message.args[0].json_value().get("type") == "result"  # noqa: E731
    with page.expect_console_message(is_result, timeout=10_000):
        page.evaluate('() => { ws.send(JSON.stringify({prompt: "Hello!"})); }')
    assert [m["type"] for m in logged] == ["ack", "token", "result"]
    assert logged[-1]["result"] == "Hello!"


def test_the_event_source_snippet_receives_tokens(page: Page, live_server_url: str) -> None:
    request_id = httpx.post(
        f"{live_server_url}/api/v1/infer", json={"prompt": "one two three"}
    ).json()["request_id"]
    tokens = page.evaluate(
        """requestId => new Promise(resolve => {
            const seen = [];
            const eventSource = new EventSource('/api/v1/stream/' + requestId);
            eventSource.addEventListener('token', e => {
              seen.push(JSON.parse(e.data));
            });
            eventSource.addEventListener('complete', () => { eventSource.close(); resolve(seen); });
        })""",
        request_id,
    )
    assert [t["chunk"] for t in tokens] == [0, 1, 2]
    assert "".join(t["data"] for t in tokens) == "one two three"
