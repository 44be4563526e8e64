"""A moderator works the queue in a real browser: headless Debian Chromium driven by Playwright (no browser
download), against the gate served over real HTTP. Screenshots go to var/test-artifacts/."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.gate.review.conftest import PASSWORD, Gate

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "var" / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture
def served(tmp_path, scanned):
    from werkzeug.serving import make_server

    gate = Gate(tmp_path / "data", scanned, 8)
    server = make_server("127.0.0.1", 0, gate.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gate.url = f"http://127.0.0.1:{server.server_port}"
    yield gate
    server.shutdown()
    thread.join(5)


@pytest.fixture
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        browser.close()


def sign_in(page, gate, username: str) -> None:
    page.goto(f"{gate.url}/queue")
    assert "/login" in page.url  # anonymous → the sign-in page
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def test_a_moderator_blocks_an_item_and_sees_the_audit_entry(served, page):
    gate = served
    sign_in(page, gate, "mod")
    page.wait_for_selector("#queue tbody tr[data-href]")
    assert page.url.startswith(f"{gate.url}/queue")
    assert page.locator("#total").inner_text() == str(len(gate.ids))
    page.screenshot(path=str(ARTIFACTS / "01-queue.png"), full_page=True)

    page.keyboard.press("j")  # the keyboard path: select the first row, open it
    page.keyboard.press("Enter")
    page.wait_for_selector("table.evidence img")
    images = page.locator("table.evidence img")
    assert images.count() >= 3
    assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(3))
    page.screenshot(path=str(ARTIFACTS / "02-item-evidence.png"), full_page=True)
    item = page.url.split("/queue/")[1].split("?")[0]

    page.click("#claim")
    page.wait_for_selector("text=claimed by you")
    page.keyboard.press("b")  # block, then type the reason (focus is already there) and submit with Ctrl+Enter
    page.keyboard.type("Every probe render draws the registered character; the base renders do not.")
    page.screenshot(path=str(ARTIFACTS / "03-block-with-reason.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=block recorded")
    assert item not in page.locator("#queue").inner_html()  # it left the queue
    assert page.locator("#total").inner_text() == str(len(gate.ids) - 1)

    page.goto(f"{gate.url}/queue/{item}")
    audit = page.locator("#audit")
    assert "decision.block" in audit.inner_text() and "Every probe render draws" in audit.inner_text()
    page.screenshot(path=str(ARTIFACTS / "04-item-audit.png"), full_page=True)
    assert gate.db["uploads"].get(item)["verdict"] == "block"

    # The admin's audit page shows the same entry, and the chain verifies.
    page.click("text=Sign out")
    sign_in(page, gate, "adm")
    page.goto(f"{gate.url}/audit")
    assert "chain verifies" in page.locator("#verification").inner_text()
    row = page.locator("#entries tr", has_text="decision.block")
    assert item in row.inner_text() and "mod" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "05-audit-log.png"), full_page=True)
