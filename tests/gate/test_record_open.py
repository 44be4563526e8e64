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
