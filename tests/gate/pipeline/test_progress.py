"""A live scan's progress in the status API: the stage the record holds, the uploads ahead of it, and an estimate
from the probe times this gate measured (a real record; the stages entered as the pipeline's jobs enter them)."""

from __future__ import annotations

import secrets
from pathlib import Path

from gate.pipeline.jobs import probe_answered
from gate.pipeline.outcome import begin_scan, refuse
from gate.pipeline.progress import progress
from gate.pipeline.status import report_lines, upload_report
from gate.record.db import open_db
from gate.record.uploads import Stage, enter_stage, get_upload, record_upload


class _Error:
    code, message = "file_empty", "the file is empty"


def _upload(db, name: str) -> str:
    return record_upload(db, "direct", {"hub": "h", "model_id": secrets.token_hex(4), "title": name},
                         Path("/nonexistent"), secrets.token_hex(32), 1, f"{name}.safetensors").upload["id"]


def _probe(db, upload_id: str, seconds: float) -> None:
    """The pipeline's path: the scan starts, its probe is requested, and a worker's answer comes in."""
    begin_scan(db, get_upload(db, upload_id))
    enter_stage(db, upload_id, Stage.PROBING, {"queue": "probe"})
    probe_answered(db, get_upload(db, upload_id), {"seconds": seconds})


def test_stages_and_an_estimate_once_probes_have_been_timed(tmp_path):
    db = open_db(tmp_path / "gate.db")
    first = _upload(db, "first")
    waiting = progress(db, get_upload(db, first))
    assert waiting["stage"] == "received" and waiting["ahead"] == 0 and "estimate_seconds" not in waiting
    assert waiting["estimate_basis"] == "no probe has finished on this gate yet"

    for seconds in (0.0, 0.0, 0.0):  # answered at once: no time passed, so the worker's claim is capped at 0
        _probe(db, _upload(db, "done"), seconds)
    concluding = progress(db, get_upload(db, db.execute("select upload_id from probe_times").fetchone()[0]))
    assert concluding["stage"] == "concluding" and "estimate_seconds" not in concluding

    # Three uploads queued for the one worker: each waits for those ahead of it.
    db["probe_times"].delete_where()
    db["probe_times"].insert_all([{"upload_id": "x", "at": "t", "lane": "probing", "waited": 0, "work": w}
                                  for w in (10.0, 30.0, 20.0)])
    queued = [_upload(db, f"queued{i}") for i in range(3)]
    for upload_id in queued:
        begin_scan(db, get_upload(db, upload_id))
        enter_stage(db, upload_id, Stage.PROBING)
    third = progress(db, get_upload(db, queued[2]))
    # `first` (still received) and two probing uploads are ahead; 20 s median each, four rounds on one worker.
    assert third["stage"] == "probing" and third["ahead"] == 3
    assert third["estimate_seconds"] == 80.0
    assert "median probe time of the last 3 on this gate (20.0 s), 3 ahead, 1 probe worker" == third["estimate_basis"]
    assert progress(db, get_upload(db, first))["estimate_seconds"] == 20.0  # nothing ahead: one probe's time

    refuse(db, first, _Error())
    assert progress(db, get_upload(db, first)) is None  # ended: no progress
    assert progress(db, get_upload(db, queued[2]))["ahead"] == 2


def test_each_stage_is_journalled_and_the_probe_time_kept(tmp_path):
    db = open_db(tmp_path / "gate.db")
    upload_id = _upload(db, "timed")
    _probe(db, upload_id, 5.0)
    [timing] = db["probe_times"].rows
    assert timing["upload_id"] == upload_id and timing["lane"] == "probing" and timing["work"] <= 5.0
    actions = [e["action"] for e in db["upload_events"].rows_where("upload_id = ?", [upload_id], order_by="id")]
    assert actions == ["received", "scan started", "probing", "concluding"]


def test_the_cli_report_reads_as_lines_not_json(tmp_path):
    db = open_db(tmp_path / "gate.db")
    upload_id = _upload(db, "Sepia style")
    begin_scan(db, get_upload(db, upload_id))
    enter_stage(db, upload_id, Stage.PROBING)
    lines = report_lines(upload_report(db, upload_id))
    assert lines[0] == f"upload     {upload_id}"
    assert "file       Sepia style.safetensors" in lines and "state      scanning" in lines
    assert any(line.startswith("stage      probing for ") and line.endswith(", 0 ahead") for line in lines)
    journal = lines[lines.index("journal:") + 1:]
    assert len(journal) == 3 and "scan started" in journal[1] and "probing" in journal[2]
    assert not any(line.lstrip().startswith(("{", "[")) for line in lines)
