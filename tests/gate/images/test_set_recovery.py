"""Nothing accepted is lost: an image set whose jobs died (Redis restarted, a worker killed) is screened again,
by the reconciler on RQ or by a restarted embedded worker; after five tries it fails, visibly."""

from __future__ import annotations

import zipfile

from fixtures import image_truth
from gate.images.record import get_set, record_set
from gate.pipeline.reconcile import reconcile_sets
from gate.queues import INTAKE, RedisQueues
from gate.record.db import open_db
from tests.support import RedisServer, needs_redis


def _recorded(tmp_path, db) -> str:
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for entry in image_truth.load(split="held_back", kinds=("generic",))[:3]:
            out.write(entry["path"], entry["path"].name)
    row, _ = record_set(db, "dataset", {"model_id": "lost"}, archive, "ab" * 32, archive.stat().st_size, "set.zip")
    db["image_sets"].update(row["id"], {"updated_at": "2026-01-01T00:00:00.000+00:00"})  # long past its grace
    return row["id"]


@needs_redis
def test_the_reconciler_restarts_a_lost_set_and_fails_it_after_five_tries(tmp_path):
    db = open_db(tmp_path / "gate.db")
    set_id = _recorded(tmp_path, db)
    server = RedisServer(tmp_path)
    server.start()
    try:
        queues = RedisQueues(server.url)
        assert reconcile_sets(db, queues) == [set_id]
        assert queues.depth()[INTAKE] == 1 and queues.job_status(f"{set_id}_screen")[0] is not None
        assert reconcile_sets(db, queues) == []  # its job is queued now: alive
        queues.queue(INTAKE).empty()
        db["image_sets"].update(set_id, {"attempts": 5, "updated_at": "2026-01-01T00:00:00.000+00:00"})
        assert reconcile_sets(db, queues) == [set_id]
        failed = get_set(db, set_id)
        assert (failed["state"], failed["error_code"]) == ("failed", "scan_failed")
        assert db.execute("select event from outbox where upload_id = ?", [set_id]).fetchone()[0] == "images.failed"
    finally:
        server.stop()

