"""`make test` ends by saying what it skipped and why (tests.skipped), in a real pytest run of its own."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_a_run_that_skipped_tests_lists_each_reason_loudly(tmp_path):
    (tmp_path / "test_needs.py").write_text(
        "import pytest\n"
        "@pytest.mark.skipif(True, reason='needs the redis-server binary')\n"
        "def test_queue(): pass\n"
        "def test_browser(): pytest.skip(\"needs Debian's chromium\")\n"
        "def test_other(): pytest.skip(\"needs Debian's chromium\")\n"
        "def test_runs(): pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skipped", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "3 TESTS DID NOT RUN" in done.stdout
    assert "   2 skipped: needs Debian's chromium" in done.stdout
    assert "   1 skipped: needs the redis-server binary" in done.stdout


def test_a_full_run_says_nothing_more(tmp_path):
    (tmp_path / "test_all.py").write_text("def test_runs(): pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skipped", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "DID NOT RUN" not in done.stdout
