"""How hard the record waits for the disk (GATE_RECORD_SYNC), and checkpoints kept off the request path."""

from __future__ import annotations

import io
import sqlite3
import time

import pytest

from gate.config import ConfigError, load_settings
from gate.hubs.client import multipart
from gate.hubs.signatures import sign
from gate.record.db import checkpoint_in_background, open_db
from tests.support import UPLOAD_SECRET

SECRET = UPLOAD_SECRET  # the shared app fixture's


def _pragma(db, name: str) -> int:
    return db.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.mark.parametrize("sync,level", [("normal", 1), ("full", 2)])
def test_the_setting_reaches_sqlite(tmp_path, sync, level):
    db = open_db(tmp_path / "gate.db", sync)
    assert _pragma(db, "synchronous") == level
    assert _pragma(db, "journal_mode") == "wal"
    assert _pragma(db, "wal_autocheckpoint") == 1000  # SQLite's own default, for workers and the CLI
    assert _pragma(open_db(tmp_path / "gate.db", sync, autocheckpoint=False), "wal_autocheckpoint") == 0


def test_an_unknown_value_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("GATE_RECORD_SYNC", "sometimes")
    with pytest.raises(ConfigError, match="GATE_RECORD_SYNC"):
        load_settings()


def test_the_background_checkpoint_moves_the_log_into_the_database(tmp_path):
    path = tmp_path / "gate.db"
    db = open_db(path, autocheckpoint=False)
    db.execute("create table t (x blob)")
    before = path.stat().st_size
    with db.conn:
        db.conn.executemany("insert into t values (?)", [(b"x" * 4000,) for _ in range(200)])
    assert path.stat().st_size == before  # committed to the log only: nothing copied back yet
    checkpoint_in_background(path, interval=0.05)
    deadline = time.time() + 10
    # Waited for whole: a checkpoint copies pages as it goes, so the file can be caught half grown.
    while path.stat().st_size <= before + 200 * 4000 and time.time() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > before + 200 * 4000
    assert sqlite3.connect(path).execute("select count(*) from t").fetchone()[0] == 200


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_deliveries_are_recorded_in_either_mode(make_app, tmp_path, corpus_dir, sync):
    app = make_app(record_sync=sync)
    client = app.test_client()
    data = (corpus_dir / "trailing_bytes.safetensors").read_bytes()
    body, content_type = multipart(data, {"model_id": f"m-{sync}"}, "lora.safetensors")
    response = client.post("/v1/uploads", data=io.BytesIO(body), content_type=content_type,
                           headers={"X-Gate-Signature": sign(body, SECRET)})
    assert response.status_code == 202
    record = sqlite3.connect(tmp_path / "data" / "gate.db")
    upload_id = response.get_json()["id"]
    row = record.execute("select model_id, file_size from uploads where id = ?", (upload_id,)).fetchone()
    assert row == (f"m-{sync}", len(data))
    with app.app_context():
        from gate.web.context import db

        assert _pragma(db(), "synchronous") == (2 if sync == "full" else 1)
        assert _pragma(db(), "wal_autocheckpoint") == 0
