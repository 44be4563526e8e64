"""A moderator works the queue in a real browser: headless Debian Chromium driven by Playwright (no browser
download), against the gate served over real HTTP. Screenshots go to var/test-artifacts/."""

from __future__ import annotations

import json
import shutil
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
def decided(tmp_path, scanned, judged):
    """A gate whose record holds three uploads as the gate decided them, block, quarantine and allow, each with
    the evidence of its real scan; served over HTTP. Returns (gate, {verdict: upload id})."""
    from werkzeug.serving import make_server

    gate = Gate(tmp_path / "data", scanned, 0)
    ids = {}
    for n, (verdict, (scan, folder)) in enumerate(sorted(judged.items())):
        upload_id = ids[verdict] = f"up_verdict{n:09d}"
        gate.db["uploads"].insert({
            "id": upload_id, "source": "direct", "delivery_key": f"{upload_id}-key", "hub": "civitai-test",
            "model_id": f"m{n}", "uploader": "someone", "title": f"{Path(scan['filename']).stem} upload",
            "filename": scan["filename"], "file_sha256": scan["file_sha256"], "file_size": scan["file_size"],
            "tensor_hash": scan["tensor_hash"], "state": "decided", "verdict": verdict,
            "reasons": json.dumps(scan["reasons"]), "matches": json.dumps(scan["matches"]),
            "probe_set": scan["probe_set"], "created_at": "2026-12-01T10:00:00.000+00:00",
            "decided_at": "2026-12-01T10:01:00.000+00:00", "review_status": "quarantined" if verdict == "quarantine"
            else None})
        shutil.copytree(folder, gate.data_dir / "evidence" / upload_id)
    server = make_server("127.0.0.1", 0, gate.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gate.url = f"http://127.0.0.1:{server.server_port}"
    yield gate, ids
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


def _loaded(page, selector: str) -> list[bool]:
    """Whether each image the selector finds shows a picture. Attached is not loaded: this waits until every one
    has finished loading, and a broken image finishes with no width."""
    page.wait_for_function("s => [...document.querySelectorAll(s)].every(img => img.complete)", arg=selector)
    return page.eval_on_selector_all(selector, "imgs => imgs.map(img => img.naturalWidth > 0)")


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
    assert all(_loaded(page, "table.evidence img")[:3])
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


def test_the_item_page_shows_the_evidence_behind_a_block_a_quarantine_and_an_allow(decided, page):
    """For each verdict: its reasons, the likelihood table against its thresholds, every render marked counted or
    not (and why) under the stated thresholds, and the strip of what the LoRA draws, every image loaded."""
    gate, ids = decided
    assert set(ids) == {"block", "quarantine", "allow"}
    sign_in(page, gate, "mod")
    page.wait_for_selector("#queue")
    for n, verdict in enumerate(("block", "quarantine", "allow"), start=6):
        page.goto(f"{gate.url}/queue/{ids[verdict]}")
        assert page.locator("h1").inner_text().endswith("upload " + (
            "quarantined" if verdict == "quarantine" else f"decided: {verdict}"))
        reasons = page.locator("li:has(span.tag)").all_inner_texts()
        assert reasons and all(r.strip() for r in reasons)  # allow included: every verdict says why
        rows = page.locator("#likelihood tr").all_inner_texts()[1:]
        assert rows and all("%" in row for row in rows)
        assert all(any(band in row for band in ("below the quarantine", "between quarantine and block",
                                                 "over the block", "screened")) for row in rows), rows
        assert "quarantines" in page.locator("#likelihood").inner_text()
        likelier = page.locator("#likelihood figure.likelier img")  # the references it made likeliest
        assert likelier.count() >= 1
        assert all(_loaded(page, "#likelihood figure.likelier img"))
        assert "A render counts towards a character when" in page.locator("body").inner_text()
        marks = page.locator("table.evidence tbody tr td:nth-child(4)").all_inner_texts()
        counted = [m for m in marks if "counted: a match for" in m]
        uncounted = [m for m in marks if "not counted" in m]
        assert marks and len(counted) + len(uncounted) == len(marks)
        if verdict == "allow":  # a render may count, but too few: the reason says how many against how many
            assert "nothing_shown" in " ".join(reasons)
        elif verdict == "block":
            assert counted
        drawn = page.locator("#drawn img")
        assert drawn.count() == 6
        assert all(_loaded(page, "#drawn img"))
        page.screenshot(path=str(ARTIFACTS / f"{n:02d}-item-{verdict}.png"), full_page=True)
