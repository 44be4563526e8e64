"""Opening the record from processes that fork: RQ forks its scheduler while a worker's heartbeat thread may
be opening the record (and taking its migration lock)."""

from __future__ import annotations

import os
import signal
import threading
import time

from gate.record import db as record


def test_a_child_forked_while_the_record_is_opened_does_not_keep_it_locked(tmp_path, monkeypatch):
    path = tmp_path / "gate.db"
    record.open_db(path).conn.close()
    children: list[int] = []
    apply = record.migrations.apply

    def apply_and_fork(db):  # a fork while the migration lock is held, as RQ's scheduler fork can land
        pid = os.fork()
        if pid == 0:  # the child lives on without touching the record, like the scheduler
            time.sleep(30)
            os._exit(0)
        children.append(pid)
        return apply(db)

    monkeypatch.setattr(record.migrations, "apply", apply_and_fork)
    record.open_db(path).conn.close()
    monkeypatch.setattr(record.migrations, "apply", apply)
    opened = threading.Event()
    threading.Thread(target=lambda: (record.open_db(path).conn.close(), opened.set()), daemon=True).start()
    try:
        assert opened.wait(10), "the record stayed locked while the forked child lived"
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_migrations_are_numbered_in_the_order_they_apply(tmp_path):
    db = record.open_db(tmp_path / "gate.db")
    applied = [row["name"] for row in db["_sqlite_migrations"].rows_where(order_by="rowid")]
    assert applied == [m.name for m in record.migrations._migrations]
    assert [int(name[1:4]) for name in applied] == list(range(1, len(applied) + 1))


def test_a_record_made_under_the_old_migration_names_is_renamed_not_migrated_again(tmp_path):
    """A record whose migrations were applied under their issue-numbered names: opening it renames them, applies
    only what is new, and keeps its rows."""
    from gate.record.migrations import RENAMED

    path = tmp_path / "gate.db"
    db = record.open_db(path)
    db.execute("insert into blocklist (tensor_hash, reason, source, created_at) values ('h', 'r', 's', 't')")
    for old, new in RENAMED.items():  # as a record from before the renumbering holds them
        db.execute("update _sqlite_migrations set name = ? where name = ?", [old, new])
    db.execute("delete from _sqlite_migrations where name = 'm018_review_entry_in_code'")  # not applied back then
    db.execute("CREATE TRIGGER uploads_enter_review AFTER UPDATE OF verdict ON uploads BEGIN SELECT 1; END")
    db.conn.commit()
    db.conn.close()
    reopened = record.open_db(path)  # a migration applied twice would fail (its tables exist)
    names = {row["name"] for row in reopened["_sqlite_migrations"].rows}
    assert names == {m.name for m in record.migrations._migrations} and not names & set(RENAMED)
    assert reopened.execute("select count(*) from blocklist").fetchone()[0] == 1
    triggers = {row[0] for row in reopened.execute("select name from sqlite_master where type = 'trigger'")}
    assert "uploads_enter_review" not in triggers and "uploads_review_fields" not in triggers


def test_an_upload_enters_the_moderators_queue_when_it_is_quarantined_with_its_strongest_match(tmp_path):
    import json

    from gate.record.uploads import update_upload

    db = record.open_db(tmp_path / "gate.db")
    db["characters"].insert({"id": "comet", "name": "Captain Comet", "aliases": "[]", "rights_holder": "Comet Co",
                             "policy": "quarantine", "status": "active"})
    db["uploads"].insert({"id": "u1", "state": "decided", "verdict": "allow", "created_at": "t", "updated_at": "t"})
    matches = [{"character": "other", "best_score": 0.41}, {"character": "comet", "best_score": 0.93}]
    entered = update_upload(db, "u1", {"verdict": "quarantine", "matches": json.dumps(matches)})
    assert entered["review_status"] == "quarantined" and entered["review_character"] == "comet"
    assert entered["review_score"] == 0.93 and entered["review_rights_holder"] == "Comet Co"
    assert db.execute("select n from review_counts where status = 'quarantined'").fetchone()[0] == 1
    left = update_upload(db, "u1", {"verdict": "allow", "review_status": None})  # a moderator's allow
    assert left["review_status"] is None
    again = update_upload(db, "u1", {"matches": "[]"})  # no verdict change: stays out
    assert again["review_status"] is None
    disputed = update_upload(db, "u1", {"review_status": "disputed"})  # a dispute enters it too, scored 0
    assert disputed["review_status"] == "disputed" and disputed["review_score"] == 0.0


def test_each_state_change_is_one_key_value_line_in_the_log(tmp_path, caplog):
    """Operators follow scans in the log: received, then each state and verdict, with the seconds since."""
    import logging

    from gate.record.uploads import record_upload, update_upload

    db = record.open_db(tmp_path / "gate.db")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="gate.uploads"):
        upload = record_upload(db, "direct", {"hub": "h", "model_id": "m"}, weights, "ab" * 32, 1,
                               "my lora.safetensors").upload
        update_upload(db, upload["id"], {"state": "scanning"})
        update_upload(db, upload["id"], {"matches": "[]"})  # no state or verdict change: no line
        update_upload(db, upload["id"], {"state": "decided", "verdict": "block"})
    lines = [r.getMessage() for r in caplog.records if r.name == "gate.uploads"]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"upload={upload['id']} state=received") and 'file="my lora.safetensors"' in lines[0]
    assert "state=scanning" in lines[1] and "verdict=" not in lines[1]
    assert "state=decided verdict=block" in lines[2] and " seconds=" in lines[2]
