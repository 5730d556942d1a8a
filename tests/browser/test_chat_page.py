"""The chat page in a real browser: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from harness.processes import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
WORDS = 40
PROMPT = " ".join(f"word{i}" for i in range(WORDS))  # ~2 s at the live server's pace
PHONE = {"width": 390, "height": 800}


@pytest.fixture
def browser() -> Iterator[Browser]:
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
        yield browser
        browser.close()


def open_chat(
    browser: Browser, url: str, frames: list[dict[str, Any]] | None = None, **context: Any
) -> Page:
    """The chat page in a fresh context (its own localStorage: a new session);
    ``frames`` collects the JSON messages the page sends over its socket."""
    page = browser.new_context(**{"viewport": PHONE, **context}).new_page()
    if frames is not None:
        page.on(
            "websocket",
            lambda ws: ws.on("framesent", lambda payload: frames.append(json.loads(payload))),
        )
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    return page


@pytest.fixture
def page(browser: Browser, live_server_url: str) -> Page:
    return open_chat(browser, live_server_url)


def reload(page: Page) -> None:
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


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
    screenshot(page, "chat-page.png")


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


def done(answer: Any, status: str = "completed") -> None:
    expect(answer).to_have_attribute("data-status", status, timeout=20_000)


# --- Markdown, safely -----------------------------------------------------------

# The echo backend answers with the prompt: a prompt is how an answer gets hostile.
HOSTILE = """**bold** and `inline code`

```python
print("hi")
```

<img src="x" onerror="window.pwned = 'img'">

<script>window.pwned = 'script'</script>

<a href="#" onclick="window.pwned = 'onclick'">press</a> [link](javascript:window.pwned='href')

<table background="http://beacon.invalid/leak"><tr><td>cell</td></tr></table>

<data id="prompt" value="hijacked">a control's name</data>
"""


def test_answers_render_markdown_and_html_in_them_never_runs(page: Page) -> None:
    answer = ask(page, HOSTILE)
    done(answer)
    body = answer.locator(".body")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("p code")).to_have_text("inline code")
    expect(body.locator("pre code")).to_have_text('print("hi")\n')
    assert (
        body.locator("pre code")
        .evaluate("el => getComputedStyle(el).fontFamily")
        .startswith("ui-monospace")
    )
    assert body.locator("img, script, [onerror], [onclick], [style]").count() == 0
    assert body.locator("a[href^='javascript'], [background], [id], [name]").count() == 0
    assert page.evaluate("window.pwned") is None
    # The page's own controls are still the page's: the next prompt is what is typed.
    assert page.evaluate("document.getElementById('prompt').tagName") == "TEXTAREA"
    screenshot(page, "chat-markdown.png")


def test_copy_buttons_copy_a_code_block_and_a_whole_answer(
    browser: Browser, live_server_url: str
) -> None:
    page = open_chat(browser, live_server_url, permissions=["clipboard-read", "clipboard-write"])
    answer = ask(page, "Run this:\n\n```\nls -la /tmp\n```\n\nthen relax.")
    done(answer)
    answer.locator("pre .copy-code").click()
    expect(answer.locator("pre .copy-code")).to_have_attribute("data-copied", "true")
    assert page.evaluate("navigator.clipboard.readText()") == "ls -la /tmp\n"
    answer.locator(".copy-msg").click()
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert clipboard == "Run this:\n\n```\nls -la /tmp\n```\n\nthen relax."


# --- signals ----------------------------------------------------------------------


def test_typing_dots_show_until_the_first_token(page: Page) -> None:
    # Submit and look in the same task: before any server message can arrive.
    shown = page.evaluate(
        """() => {
            document.getElementById('prompt').value = 'typing check one two three';
            document.getElementById('composer').requestSubmit();
            const typing = [...document.querySelectorAll('li.msg.assistant')].pop()
                .querySelector('.typing');
            return !typing.hidden && typing.getBoundingClientRect().height > 0;
        }"""
    )
    assert shown
    answer = page.locator("li.msg.assistant").last
    page.wait_for_function("el => Number(el.dataset.tokens || 0) >= 1", arg=answer.element_handle())
    expect(answer.locator(".typing")).to_be_hidden()
    done(answer)
    expect(answer.locator(".typing")).to_be_hidden()


def test_a_queued_answer_says_queued_then_generating(page: Page, live_server_url: str) -> None:
    # Fill the live server's 8 worker slots with slow answers (~10 s each).
    long_prompt = " ".join(f"slot{i}" for i in range(200))
    with httpx.Client(base_url=live_server_url) as client:
        blockers = [
            client.post(
                "/api/v1/infer", json={"prompt": f"{i} {long_prompt}", "rag": False}
            ).json()["request_id"]
            for i in range(8)
        ]
        try:
            for request_id in blockers:  # every slot is taken before we ask
                while client.get(f"/api/v1/status/{request_id}").json()["status"] == "pending":
                    pass
            answer = ask(page, "am I queued")
            expect(answer.locator(".status")).to_have_text("queued (position 1)", timeout=10_000)
            expect(answer).to_have_attribute("data-status", "pending")
        finally:
            for request_id in blockers:
                client.post(f"/api/v1/requests/{request_id}/cancel/")
    done(answer)
    expect(answer.locator(".status")).to_have_text("completed")


def test_an_answer_cut_at_max_tokens_says_so_also_after_a_reload(page: Page) -> None:
    page.fill("#max-tokens", "3")
    answer = ask(page, "one two three four five six")
    done(answer)
    expect(answer.locator(".body")).to_have_text("one two three")
    expect(answer.locator(".notice[data-kind=length]")).to_contain_text("max tokens")
    reload(page)
    restored = page.locator("li.msg.assistant").last
    expect(restored.locator(".notice[data-kind=length]")).to_contain_text("max tokens")


def test_stop_cancels_and_the_reason_and_partial_text_survive_a_reload(page: Page) -> None:
    answer = ask(page, PROMPT)
    page.wait_for_function("el => Number(el.dataset.tokens || 0) >= 3", arg=answer.element_handle())
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    done(answer, "cancelled")
    expect(page.locator("#stop")).to_be_hidden()
    expect(answer.locator(".notice[data-kind=reason]")).to_have_text("Cancelled by the client.")
    partial = answer.locator(".body").inner_text()
    assert partial and PROMPT.startswith(partial) and partial != PROMPT
    reload(page)
    restored = page.locator("li.msg.assistant").last
    expect(restored).to_have_attribute("data-status", "cancelled")
    expect(restored.locator(".notice[data-kind=reason]")).to_have_text("Cancelled by the client.")
    # The partial text is replayed from the request's stream.
    expect(restored.locator(".body")).not_to_be_empty()
    assert PROMPT.startswith(restored.locator(".body").inner_text())
    screenshot(page, "chat-cancelled.png")


def test_a_rejected_submission_scrolls_its_error_into_view(page: Page) -> None:
    tall = "\n".join(f"line {i}" for i in range(60))
    done(ask(page, tall))
    page.fill("#max-tokens", "999999")  # over the server's ceiling: refused
    page.evaluate(
        """() => {
            document.getElementById('prompt').value = 'refuse me';
            document.getElementById('composer').requestSubmit();
            document.getElementById('messages').scrollTop = 0;  // the reader scrolled up
        }"""
    )
    error = page.locator("li.msg.assistant").last.locator(".notice[data-kind=reason]")
    expect(error).to_contain_text("max_tokens")
    expect(error).to_be_in_viewport()


def test_regenerate_asks_the_same_prompt_again_in_the_same_session(
    browser: Browser, live_server_url: str
) -> None:
    frames: list[dict[str, Any]] = []
    page = open_chat(browser, live_server_url, frames)
    ask(page, "say it again")
    first = page.locator("li.msg.assistant").first  # (ask returns a lazy "last")
    done(first)
    first.locator(".regenerate").click()
    second = page.locator("li.msg.assistant").nth(1)
    done(second)
    expect(second.locator(".body")).to_have_text("say it again")
    expect(first.locator(".regenerate")).to_be_hidden()  # only the last answer offers it
    submits = [f for f in frames if f.get("type") == "infer"]
    assert [f["prompt"] for f in submits] == ["say it again", "say it again"]
    assert submits[0]["session_id"] == submits[1]["session_id"]
    assert submits[1]["metadata"] == {"regenerate_of": first.get_attribute("data-request-id")}
    reload(page)  # the regenerated turn comes back as a second answer, not a second question
    expect(page.locator("li.msg.user")).to_have_count(1)
    expect(page.locator("li.msg.assistant")).to_have_count(2)
    expect(page.locator("li.msg.assistant.regenerated")).to_have_count(1)


# --- sources and RAG ----------------------------------------------------------------

ZORBLAX = "What is the capital of the Zorblax Archipelago?"


@pytest.fixture
def zorblax(live_server_url: str) -> None:
    document = {
        "title": "Zorblax",
        "source": "wiki/zorblax",
        "text": "The capital of the Zorblax Archipelago is Quenthar-9.",
    }
    response = httpx.post(f"{live_server_url}/api/v1/documents/", json=document)
    assert response.status_code in (200, 201), response.text


@pytest.mark.usefixtures("zorblax")
def test_the_passages_an_answer_used_fold_out_under_it(page: Page) -> None:
    answer = ask(page, ZORBLAX)
    done(answer)
    sources = answer.locator("details.sources")
    expect(sources.locator("summary")).to_have_text("Sources (1)")
    expect(sources.locator("blockquote")).to_be_hidden()
    sources.locator("summary").click()
    expect(sources.locator("blockquote")).to_have_text(
        "The capital of the Zorblax Archipelago is Quenthar-9."
    )
    expect(sources.locator("li b")).to_have_text("Zorblax")
    screenshot(page, "chat-sources.png")
    reload(page)
    restored = page.locator("li.msg.assistant").last
    expect(restored.locator("details.sources summary")).to_have_text("Sources (1)")


@pytest.mark.usefixtures("zorblax")
def test_the_documents_switch_off_sends_rag_false(browser: Browser, live_server_url: str) -> None:
    frames: list[dict[str, Any]] = []
    page = open_chat(browser, live_server_url, frames)
    page.locator("label.switch").click()
    expect(page.locator("#rag")).not_to_be_checked()
    answer = ask(page, ZORBLAX)
    done(answer)
    submit = [f for f in frames if f.get("type") == "infer"][-1]
    assert submit["rag"] is False
    record = httpx.get(f"{live_server_url}/api/v1/status/{answer.get_attribute('data-request-id')}")
    assert record.json()["passages"] == []
    expect(answer.locator("details.sources")).to_have_count(0)


# --- backends -------------------------------------------------------------------------


def test_backends_show_their_model(page: Page) -> None:
    # The live server runs with DEBUG on: echo is listed (tests/test_chat_page_view.py
    # checks it is not with DEBUG off).
    expect(page.locator("#backend option[value=local]")).to_have_text(
        "local · SmolLM2-135M-Instruct"
    )
    expect(page.locator("#backend option[value=echo]")).to_have_text("echo")


# --- looks: theme, phone, empty state, long prompts, favicon ---------------------------


def background(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


LIGHT, DARK = "rgb(246, 247, 249)", "rgb(20, 23, 29)"


def test_the_theme_toggle_switches_to_dark_and_is_remembered(page: Page) -> None:
    assert background(page) == LIGHT
    page.click("#theme-toggle")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert background(page) == DARK
    reload(page)
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert background(page) == DARK
    done(ask(page, "**dark** mode\n\n```\ncode\n```"))
    screenshot(page, "chat-dark.png")


def test_a_dark_system_gets_the_dark_theme_and_can_switch_to_light(
    browser: Browser, live_server_url: str
) -> None:
    page = open_chat(browser, live_server_url, color_scheme="dark")
    assert background(page) == DARK
    page.click("#theme-toggle")
    assert background(page) == LIGHT


def test_on_a_375px_phone_the_top_bar_is_one_line(browser: Browser, live_server_url: str) -> None:
    page = open_chat(browser, live_server_url, viewport={"width": 375, "height": 740})
    items = page.locator(".topbar .brand, .topbar nav > *")
    expect(items).to_have_count(5)
    boxes = [items.nth(i).bounding_box() for i in range(5)]
    middles = [box["y"] + box["height"] / 2 for box in boxes]
    assert max(middles) - min(middles) < 2, boxes
    # Left to right, nothing beyond the screen's edge, no sideways scrolling.
    assert all(a["x"] + a["width"] <= b["x"] for a, b in itertools.pairwise(boxes))
    assert boxes[-1]["x"] + boxes[-1]["width"] <= 375
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    done(ask(page, "hello from a phone"))
    screenshot(page, "chat-phone.png")


def test_the_empty_state_offers_examples_that_fill_the_composer(page: Page) -> None:
    examples = page.locator("#empty .example")
    expect(examples).to_have_count(3)
    examples.nth(1).click()
    assert page.input_value("#prompt") == examples.nth(1).inner_text()
    expect(page.locator("#prompt")).to_be_focused()
    screenshot(page, "chat-empty.png")
    page.press("#prompt", "Enter")
    expect(page.locator("#empty")).to_be_hidden()


def test_a_long_prompt_is_folded_with_show_more(page: Page) -> None:
    long_prompt = "\n".join(f"requirement {i}: keep it short" for i in range(30))
    ask(page, long_prompt)
    question = page.locator("li.msg.user").last
    expect(question).to_have_class("msg user collapsed")
    body = question.locator(".body")
    assert body.evaluate("el => el.scrollHeight > el.clientHeight + 20")
    question.locator(".more").click()
    expect(question.locator(".more")).to_have_text("show less")
    assert body.evaluate("el => el.scrollHeight <= el.clientHeight + 1")
    short = ask(page, "short")
    expect(page.locator("li.msg.user").last.locator(".more")).to_have_count(0)
    done(short)


def test_the_page_has_an_svg_favicon(page: Page, live_server_url: str) -> None:
    href = page.locator("link[rel=icon]").get_attribute("href")
    assert href and href.endswith(".svg")
    response = httpx.get(f"{live_server_url}{href}")
    assert response.status_code == 200 and b"<svg" in response.content


# --- conversations: the sidebar -----------------------------------------------------------

DESKTOP = {"width": 1200, "height": 800}


def unique(text: str) -> str:
    """A prompt no other test's conversation starts with (the live server is shared)."""
    return f"{text} {os.urandom(3).hex()}"


def conversation(page: Page, title: str):  # type: ignore[no-untyped-def]
    return page.locator("#conversations li.conversation").filter(
        has=page.locator(".conv-title", has_text=title)
    )


def current_session(page: Page) -> str:
    return str(page.evaluate("localStorage.getItem('po.session')"))


def two_conversations(page: Page) -> tuple[str, str]:
    """Ask in one conversation, start a new chat, ask in another: their prompts."""
    first, second = unique("alpha question"), unique("beta question")
    done(ask(page, first))
    # On a phone the sidebar's button is in the drawer; the chat bar has its own.
    page.locator("#new-chat, #new-chat-bar").locator("visible=true").click()
    expect(page.locator("li.msg")).to_have_count(0)
    done(ask(page, second))
    return first, second


def test_the_sidebar_lists_conversations_and_switches_between_them(
    browser: Browser, live_server_url: str
) -> None:
    page = open_chat(browser, live_server_url, viewport=DESKTOP)
    first, second = two_conversations(page)
    expect(conversation(page, first)).to_have_count(1)
    expect(conversation(page, second)).to_have_attribute("aria-current", "true")
    # Newest activity first.
    titles = page.locator("#conversations .conv-title").all_inner_texts()
    assert titles.index(second) < titles.index(first)
    conversation(page, first).locator(".conv-title").click()
    expect(conversation(page, first)).to_have_attribute("aria-current", "true")
    expect(page.locator("li.msg.user")).to_have_text([first])
    expect(page.locator("li.msg.assistant .body")).to_have_text([first])
    conversation(page, second).locator(".conv-title").click()
    expect(page.locator("li.msg.user")).to_have_text([second])
    # A turn in a conversation switched to goes into that conversation.
    done(ask(page, "a follow-up"))
    session = httpx.get(f"{live_server_url}/api/v1/sessions/{current_session(page)}").json()
    assert [t["prompt"] for t in session["turns"]] == [second, "a follow-up"]
    titles = page.locator("#conversations .conv-title").all_inner_texts()
    assert titles.index(second) < titles.index(first)
    screenshot(page, "chat-sidebar.png")


def test_a_rename_persists_after_a_reload(browser: Browser, live_server_url: str) -> None:
    page = open_chat(browser, live_server_url, viewport=DESKTOP)
    prompt = unique("rename me")
    done(ask(page, prompt))
    item = conversation(page, prompt)
    item.locator(".conv-rename").click()
    page.locator(".conv-edit").fill("Holiday plans")
    page.locator(".conv-edit").press("Enter")
    renamed = conversation(page, "Holiday plans")
    expect(renamed).to_have_attribute("data-session-id", current_session(page))
    reload(page)
    expect(conversation(page, "Holiday plans")).to_have_attribute("aria-current", "true")
    session = httpx.get(f"{live_server_url}/api/v1/sessions/{current_session(page)}").json()
    assert session["title"] == "Holiday plans"
    # Escape gives up an edit.
    conversation(page, "Holiday plans").locator(".conv-rename").click()
    page.locator(".conv-edit").fill("never mind")
    page.locator(".conv-edit").press("Escape")
    expect(page.locator(".conv-edit")).to_have_count(0)
    expect(conversation(page, "Holiday plans")).to_have_count(1)


def test_delete_asks_first_then_removes_the_conversation(
    browser: Browser, live_server_url: str
) -> None:
    page = open_chat(browser, live_server_url, viewport=DESKTOP)
    first, second = two_conversations(page)
    doomed = current_session(page)
    page.once("dialog", lambda dialog: dialog.dismiss())
    conversation(page, second).locator(".conv-delete").click()
    expect(conversation(page, second)).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    conversation(page, second).locator(".conv-delete").click()
    expect(conversation(page, second)).to_have_count(0)
    expect(conversation(page, first)).to_have_count(1)
    # The open conversation was the deleted one: the page starts a new chat.
    expect(page.locator("li.msg")).to_have_count(0)
    assert current_session(page) != doomed
    assert httpx.get(f"{live_server_url}/api/v1/sessions/{doomed}").status_code == 404
    reload(page)
    expect(conversation(page, second)).to_have_count(0)


def test_export_downloads_json_and_markdown(browser: Browser, live_server_url: str) -> None:
    page = open_chat(browser, live_server_url, viewport=DESKTOP, accept_downloads=True)
    prompt = unique("export this")
    done(ask(page, prompt))
    item = conversation(page, prompt)
    with page.expect_download() as download:
        item.locator(".conv-export[data-format=json]").click()
    assert download.value.suggested_filename.endswith(".json")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["session_id"] == current_session(page)
    assert [(t["prompt"], t["result"], t["status"]) for t in exported["turns"]] == [
        (prompt, prompt, "completed")
    ]
    with page.expect_download() as download:
        item.locator(".conv-export[data-format=markdown]").click()
    assert download.value.suggested_filename.endswith(".md")
    transcript = Path(download.value.path()).read_text()
    assert transcript.startswith(f"# {prompt}\n") and "**You**" in transcript


def test_on_a_phone_the_sidebar_opens_from_a_button(browser: Browser, live_server_url: str) -> None:
    page = open_chat(browser, live_server_url, viewport={"width": 375, "height": 740})
    first, _ = two_conversations(page)
    expect(page.locator("#sidebar")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.click("#sidebar-toggle")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")
    box = page.locator("#sidebar").bounding_box()
    assert box and box["x"] == 0 and box["width"] <= 375
    screenshot(page, "chat-sidebar-phone.png")
    conversation(page, first).locator(".conv-title").click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("li.msg.user")).to_have_text([first])
    # A tap beside the drawer closes it too.
    page.click("#sidebar-toggle")
    page.mouse.click(370, 400)
    expect(page.locator("#sidebar")).to_be_hidden()


def test_the_sidebar_is_dark_in_dark_mode(browser: Browser, live_server_url: str) -> None:
    page = open_chat(browser, live_server_url, viewport=DESKTOP, color_scheme="dark")
    prompt = unique("dark sidebar")
    done(ask(page, prompt))
    item = conversation(page, prompt)
    expect(item).to_have_attribute("aria-current", "true")
    assert item.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(35, 49, 79)"
    title = item.locator(".conv-title").evaluate("el => getComputedStyle(el).color")
    assert title == "rgb(228, 231, 238)"
    screenshot(page, "chat-sidebar-dark.png")
