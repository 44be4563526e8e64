"""The command line's edges, each as a person meets it: a clear one-line error or a readable table, never a
traceback, and no model loaded for a file that intake refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gate.catalogue.rescan import RescanError, parse_instant
from tests.conftest import REPO, run_gate
from tests.support import free_port, without_torch


def test_deliver_to_a_gate_that_is_not_running_says_so_in_one_line(tmp_path):
    lora = REPO / "fixtures/world/loras/style_sepia_peft.safetensors"
    url = f"http://127.0.0.1:{free_port()}/v1/uploads"  # nothing listens there
    done = run_gate("deliver", str(lora), "--url", url, env={"GATE_UPLOAD_SECRET": "s"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: could not reach the gate at {url}: [Errno 111] Connection refused (is `gate serve` running?)"]


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_rescan_refuses_a_date_it_cannot_read(tmp_path, option):
    done = run_gate("rescan", option, "notadate", env={"GATE_PROFILE": "demo", "GATE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"date_invalid: {option} 'notadate': write an ISO date or time" in done.stderr
    assert "rescan rs_" not in done.stderr  # no run was made


def test_rescan_dates_compare_as_instants():
    """The record's timestamps are UTC ISO text: a date, or a time in another zone, is written the same way."""
    assert parse_instant("2026-01-01", "--since") == "2026-01-01T00:00:00.000+00:00"
    assert parse_instant("2026-01-01T02:30+02:00", "--since") == "2026-01-01T00:30:00.000+00:00"
    assert parse_instant("2026-01-01T00:30:00Z", "--until") == "2026-01-01T00:30:00.000+00:00"
    with pytest.raises(RescanError) as bad:
        parse_instant("2026-13-01", "--until")
    assert bad.value.code == "date_invalid"


def test_scan_of_a_refused_file_loads_no_model(tmp_path):
    """An empty file is refused by intake before the base model loads: torch cannot even be imported here."""
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    env = {"GATE_PROFILE": "demo", "GATE_DATA_DIR": str(tmp_path / "data"), **without_torch(tmp_path)}
    done = run_gate("scan", str(empty), env=env)
    assert done.returncode == 3, done.stderr[-800:]
    assert "REFUSED" in done.stdout and "file_empty: the file is empty" in done.stdout
    assert "Traceback" not in done.stderr


def test_status_reads_as_a_table_and_its_help_shows_a_real_id(tmp_path):
    from gate.pipeline.outcome import begin_scan
    from gate.record.db import open_db
    from gate.record.uploads import get_upload, record_upload, transition

    data = tmp_path / "data"
    data.mkdir()
    db = open_db(data / "gate.db")
    upload_id = record_upload(db, "direct", {"hub": "h", "model_id": "m1", "title": "Ultraman (Showa)"},
                              Path("/nonexistent"), "ab" * 32, 1, "ultra.safetensors").upload["id"]
    begin_scan(db, get_upload(db, upload_id))
    reasons = [{"kind": "visual_match", "verdict": "block", "character": "ultraman",
                "message": "Ultraman shows in 6 of 8 probe renders"}]
    matches = [{"character": "ultraman", "name": "Ultraman", "matched": 6, "rendered": 8, "best_score": 0.912,
                "best_lift": 0.204, "best_render": 3, "best_reference": "ultraman_01.png", "share": 0.75}]
    transition(db, upload_id, "decided", "worker", "decided block",
               {"verdict": "block", "reasons": json.dumps(reasons), "matches": json.dumps(matches)})
    done = run_gate("status", upload_id, env={"GATE_DATA_DIR": str(data)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "state      decided, verdict block" in lines and "title      Ultraman (Showa)" in lines
    assert "  - Ultraman shows in 6 of 8 probe renders" in lines
    assert any(line.split() == ["Ultraman", "6", "of", "8", "0.912", "0.204", "ultraman_01.png"] for line in lines)
    assert "{" not in done.stdout.split("journal:")[0]  # no raw JSON or Python dicts before the journal
    assert json.loads(run_gate("status", upload_id, "--json", env={"GATE_DATA_DIR": str(data)}).stdout)[
        "reasons"] == reasons
    assert upload_id.startswith("up_") and "gate status up_" in run_gate("status", "--help").stdout
    missing = run_gate("status", "up_0000000000000000", env={"GATE_DATA_DIR": str(data)})
    assert missing.returncode == 1 and "upload_not_found" in missing.stderr and "Traceback" not in missing.stderr
