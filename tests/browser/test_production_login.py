"""Keys required (production): the chat page is for staff, and its WebSocket
authenticates with the staff session cookie — no key in the page or the URL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

from harness.processes import embedded_env, run_manage, serving
from tests.browser.test_chat_page import CHROMIUM

pytestmark = pytest.mark.browser
PASSWORD = "a long staff password for the browser"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("keyed-browser")
    env = embedded_env(
        data_dir, ORCHESTRATOR_ECHO_TOKEN_DELAY="0.02", ORCHESTRATOR_AUTH_REQUIRED="true"
    )
    code = (  # an operator: staff with the orchestrator's model permissions
        "from django.contrib.auth.models import Permission, User; "
        f"u = User.objects.create_user('ops', password={PASSWORD!r}, is_staff=True); "
        "u.user_permissions.set(Permission.objects.filter(content_type__app_label='inference'))"
    )
    with serving(env, data_dir / "server.log") as url:
        run_manage("shell", "-v", "0", "-c", code, env=env)
        yield url


def test_staff_log_in_and_chat_over_the_session_authenticated_socket(keyed_server: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.goto(keyed_server)
        page.wait_for_url("**/admin/login/?next=/")  # anonymous: sent to log in
        page.fill("#id_username", "ops")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{keyed_server}/")
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        page.fill("#prompt", "staff only chat works")
        page.press("#prompt", "Enter")
        answer = page.locator("li.msg.assistant").last
        expect(answer).to_have_attribute("data-status", "completed", timeout=20_000)
        expect(answer.locator(".body")).to_have_text("staff only chat works")
        assert "api_key" not in page.content().lower()
        browser.close()
