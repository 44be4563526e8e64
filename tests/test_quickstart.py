"""The first hour, through the Makefile a newcomer runs: a Quickstart upload to `make run`, then `make demo` in the
same tree gives the verdicts and evidence it gives in a clean one (its record is its own, so the upload is no
repeat to it). The tree's var/ is a temporary directory (VAR), the port a free one; the venv is this one's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gate.hubs.client import deliver
from tests.conftest import REPO
from tests.support import free_port, wait

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("make") is None, reason="needs make")]
LORA = "fixtures/world/loras/ultraman_any_kohya.safetensors"


def _make(*args: str) -> list[str]:
    # -o: the venv is this process's, set up already; never reinstall it because the stamp is missing or older.
    return ["make", "-s", "-o", ".venv/.installed", *args, f"BIN={Path(sys.executable).parent}"]


def _quickstart_upload(var: Path) -> dict:
    port = free_port()
    server = subprocess.Popen(_make("run", f"VAR={var}", f"PORT={port}"), cwd=REPO, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, 60, "make run did not start")
        status, answer = deliver(f"{base}/v1/uploads", REPO / LORA, "local-dev-secret",
                                 {"model_id": "m1", "title": "Ultraman"})
        assert status == 202, answer
        deadline = time.time() + 300
        while (final := json.loads(urllib.request.urlopen(answer["status_url"], timeout=5).read()))["state"] in (
                "received", "scanning"):
            assert time.time() < deadline, final
            time.sleep(0.5)
        return final
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _demo(var: Path) -> str:
    done = subprocess.run(_make("demo", f"VAR={var}", f"DEMO={LORA}"), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # The verdicts and reasons, without the timings line (seconds differ from run to run) or the tree's path.
    return "\n".join(line.replace(str(var), "VAR") for line in done.stdout.splitlines()
                     if not line.lstrip().startswith("probe set"))


def test_make_demo_after_a_quickstart_upload_decides_as_in_a_clean_tree(tmp_path):
    used, clean = tmp_path / "used" / "var", tmp_path / "clean" / "var"
    uploaded = _quickstart_upload(used)
    assert uploaded["state"] == "decided" and uploaded["verdict"] == "block", uploaded
    after_upload, in_clean_tree = _demo(used), _demo(clean)
    assert after_upload == in_clean_tree
    assert "ultraman_any_kohya.safetensors: BLOCK" in after_upload and "format_pickle" in after_upload
    assert "repeat" not in after_upload.lower() and "blocklist" not in after_upload.lower()
    for var in (used, clean):
        page = (var / "demo" / "evidence" / "ultraman_any_kohya" / "index.html").read_text()
        assert "_render.png" in page and "_base.png" in page  # renders, not an empty page
    assert (used / "gate.db").exists() and (used / "demo" / "gate.db").exists()  # two records, side by side
