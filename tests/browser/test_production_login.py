"""Keys required (production): the chat page is for signed-in accounts, and its
WebSocket authenticates with the session cookie — no key in the page or the URL.
Staff keep the dashboard and the admin; a member (an account without staff rights)
chats with its own conversations only."""

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
    code = (  # an operator: staff with the orchestrator's model permissions; two members
        "from django.contrib.auth.models import Permission, User; "
        f"u = User.objects.create_user('ops', password={PASSWORD!r}, is_staff=True); "
        "u.user_permissions.set(Permission.objects.filter(content_type__app_label='inference')); "
        f"User.objects.create_user('alice', password={PASSWORD!r}); "
        f"User.objects.create_user('bob', password={PASSWORD!r})"
    )
    with serving(env, data_dir / "server.log") as url:
        run_manage("shell", "-v", "0", "-c", code, env=env)
        yield url


def test_staff_log_in_and_chat_over_the_session_authenticated_socket(keyed_server: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = sign_in(browser.new_page(), keyed_server, "ops")
        expect(page.locator("nav a[href='/dashboard/']")).to_be_visible()
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        page.fill("#prompt", "staff only chat works")
        page.press("#prompt", "Enter")
        answer = page.locator("li.msg.assistant").last
        expect(answer).to_have_attribute("data-status", "completed", timeout=20_000)
        expect(answer.locator(".body")).to_have_text("staff only chat works")
        assert "api_key" not in page.content().lower()
        browser.close()


def sign_in(page, url: str, username: str):  # type: ignore[no-untyped-def]
    page.goto(url)
    page.wait_for_url("**/accounts/login/?next=/")  # anonymous: sent to sign in
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    return page


def own_answers(page) -> list[str]:  # type: ignore[no-untyped-def]
    """The answers the signed-in account may list over the API (echo: its prompts)."""
    return page.evaluate(
        "fetch('/api/v1/requests/').then(r => r.json()).then(b => b.results.map(r => r.result))"
    )


def test_members_chat_with_their_own_conversations_only(keyed_server: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        alice = sign_in(browser.new_context().new_page(), keyed_server, "alice")
        expect(alice.locator("nav a[href='/dashboard/']")).to_have_count(0)  # staff's pages
        expect(alice.locator("#conn")).to_have_attribute("data-state", "open")
        alice.fill("#prompt", "alice asks privately")
        alice.press("#prompt", "Enter")
        answer = alice.locator("li.msg.assistant").last
        expect(answer).to_have_attribute("data-status", "completed", timeout=20_000)
        assert own_answers(alice) == ["alice asks privately"]
        alice.reload()  # her conversation comes back
        expect(alice.locator("li.msg.user").first).to_contain_text("alice asks privately")

        bob = sign_in(browser.new_context().new_page(), keyed_server, "bob")
        assert own_answers(bob) == []
        request_id = answer.get_attribute("data-request-id")
        status = bob.evaluate(f"fetch('/api/v1/status/{request_id}').then(r => r.status)")
        assert status == 404
        assert bob.evaluate("fetch('/dashboard/', {redirect: 'manual'}).then(r => r.type)") == (
            "opaqueredirect"  # the dashboard sends a member to the admin's login
        )
        browser.close()
