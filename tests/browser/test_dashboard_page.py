"""The staff dashboard in Chromium: charts render and move while requests run."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser.test_chat_page import ARTIFACTS, CHROMIUM
from tests.conftest import STAFF_PASSWORD

pytestmark = pytest.mark.browser


@pytest.fixture
def staff_page(live_server_url: str) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"{live_server_url}/admin/login/?next=/dashboard/")
        page.fill("#id_username", "staff")
        page.fill("#id_password", STAFF_PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/dashboard/")
        yield page
        browser.close()


def test_the_dashboard_charts_update_while_requests_run(
    staff_page: Page, live_server_url: str
) -> None:
    expect(staff_page.locator("#feed-state")).to_have_attribute("data-state", "open")
    assert staff_page.locator(".uplot").count() == 6  # six charts drawn
    staff_page.wait_for_function(
        "Number(document.getElementById('dashboard').dataset.updates) >= 2"
    )
    with httpx.Client(base_url=live_server_url) as client:
        ids = [
            client.post("/api/v1/infer", json={"prompt": f"dash {i} a b c"}).json()["request_id"]
            for i in range(8)
        ]
        for request_id in ids:
            client.get(f"/api/v1/result/{request_id}", params={"wait": 10})
        # A question asked twice (deterministically): the second is a cache hit.
        for _ in range(2):
            body = {"prompt": "dash cached", "temperature": 0}
            cached = client.post("/api/v1/infer", json=body).json()["request_id"]
            client.get(f"/api/v1/result/{cached}", params={"wait": 10})
    # The throughput tile moves off zero and the latest table lists the new requests.
    staff_page.wait_for_function(
        "Number(document.getElementById('tile-throughput').textContent) > 0"
    )
    expect(staff_page.locator("#latest tr").first).to_contain_text(cached[:8])
    # Times say their zone; each row links to its request's admin page.
    created = staff_page.locator("#latest tr").first.locator("td").nth(3)
    expect(created).to_have_text(re.compile(r"^\d\d:\d\d:\d\d UTC$"))
    expect(staff_page.locator("#updated")).to_have_text(re.compile(r"^updated .* UTC$"))
    expect(staff_page.locator("#tile-cache")).to_have_text("50.0%")
    expect(staff_page.locator("#tiers tr")).to_have_count(4)
    expect(staff_page.locator("#keys tr").first).to_contain_text("anonymous")
    expect(staff_page.locator("#tile-saved")).to_have_text(re.compile(r"^[1-9]\d* tokens saved"))
    updates = int(staff_page.locator("#dashboard").get_attribute("data-updates"))
    staff_page.wait_for_function(
        f"Number(document.getElementById('dashboard').dataset.updates) > {updates}"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    staff_page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_anonymous_visitors_are_sent_to_log_in(live_server_url: str) -> None:
    response = httpx.get(f"{live_server_url}/dashboard/")
    assert response.status_code == 302 and "/admin/login/" in response.headers["location"]
    assert httpx.get(f"{live_server_url}/dashboard/feed").status_code == 403


def test_the_charts_draw_the_last_minute_as_soon_as_the_page_opens(
    staff_page: Page, live_server_url: str
) -> None:
    with httpx.Client(base_url=live_server_url) as client:
        for i in range(3):
            request_id = client.post("/api/v1/infer", json={"prompt": f"before {i}"}).json()[
                "request_id"
            ]
            client.get(f"/api/v1/result/{request_id}", params={"wait": 10})
    staff_page.reload()
    staff_page.wait_for_function(
        "Number(document.getElementById('dashboard').dataset.updates) >= 1"
    )
    # The first snapshot brought a minute of points, not one: the requests that
    # finished before the page opened are on the throughput chart already.
    drawn = staff_page.evaluate(
        """() => {
          const s = window.dashboardDebug.series;
          const updates = Number(document.getElementById('dashboard').dataset.updates);
          const before = s.throughput.slice(0, s.time.length - updates);
          return {backfilled: s.time.length - updates, busy: before.filter((v) => v > 0).length};
        }"""
    )
    assert drawn["backfilled"] >= 10 and drawn["busy"] >= 1, drawn


def test_a_latest_request_opens_its_admin_page(staff_page: Page, live_server_url: str) -> None:
    with httpx.Client(base_url=live_server_url) as client:
        request_id = client.post("/api/v1/infer", json={"prompt": "open me"}).json()["request_id"]
        client.get(f"/api/v1/result/{request_id}", params={"wait": 10})
    link = staff_page.locator("#latest a", has_text=request_id[:8])
    expect(link).to_have_attribute(
        "href", f"/admin/inference/inferencerequest/{request_id}/change/"
    )
    link.click()
    staff_page.wait_for_url(f"**/admin/inference/inferencerequest/{request_id}/change/")
    expect(staff_page.locator("#content")).to_contain_text("open me")
    ARTIFACTS.mkdir(exist_ok=True)
    staff_page.screenshot(path=str(ARTIFACTS / "admin-request.png"), full_page=True)
