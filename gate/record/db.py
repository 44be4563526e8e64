"""The system of record: SQLite in WAL mode through sqlite-utils, its schema as migrations applied on open."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from gate.record.migrations import migrations, rename_applied

log = logging.getLogger(__name__)


def open_db(path: str | Path, sync: str = "normal", autocheckpoint: bool = True) -> Database:
    """Open (creating if needed) the record and bring its schema up to date.

    `sync` is Settings.record_sync. With `autocheckpoint` off, commits never copy the log back into the
    database themselves (a commit that did waited tens of ms); `checkpoint_in_background` does it instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(path)
    db.enable_wal()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute(f"PRAGMA synchronous = {'FULL' if sync == 'full' else 'NORMAL'}")
    if not autocheckpoint:
        db.execute("PRAGMA wal_autocheckpoint = 0")
    # Processes starting together on a new record (gunicorn's workers) would race to create the migrations
    # table; a lock file beside the record lets one migrate while the others wait. A POSIX record lock
    # (lockf), not flock: a child forked while it is held (RQ forks its scheduler while the worker's heartbeat
    # thread may be opening the record) does not inherit it, where an inherited flock stayed held for the
    # child's life and hung every later open in the worker. Record locks do not exclude threads of one
    # process from each other, so a thread lock does that.
    with _migrating, open(path.parent / f"{path.name}.migrate-lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        rename_applied(db)
        migrations.apply(db)
    return db


_migrating = threading.Lock()


_checkpointing: set[tuple[int, str]] = set()
_checkpointing_lock = threading.Lock()


def checkpoint_in_background(path: str | Path, interval: float = 1.0) -> None:
    """Copy the write-ahead log back into the database every `interval` seconds, off the request path.

    For connections opened with autocheckpoint off. PASSIVE: it never waits on readers or writers, so a
    delivery committing meanwhile is not held up. One daemon thread per process and record (a forked worker
    starts its own); it ends when the record's file is gone.
    """
    key = (os.getpid(), str(path))
    if key in _checkpointing:
        return
    with _checkpointing_lock:
        if key in _checkpointing:
            return
        _checkpointing.add(key)
    threading.Thread(target=_checkpoint_loop, args=(key, interval), name="gate-checkpoint", daemon=True).start()


def _checkpoint_loop(key: tuple[int, str], interval: float) -> None:
    path = key[1]
    connection = sqlite3.connect(path, timeout=5, check_same_thread=False)
    try:
        while os.path.exists(path):
            time.sleep(interval)
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.warning("WAL checkpoint of %s failed; trying again", path, exc_info=True)
    finally:
        connection.close()
        _checkpointing.discard(key)


@contextlib.contextmanager
def writing(db: Database) -> Iterator[Database]:
    """A write transaction that takes the write lock up front (BEGIN IMMEDIATE).

    A deferred transaction that reads and then writes fails at once with "database is locked" when another
    connection wrote in between; taking the lock first makes writers queue (busy_timeout) instead.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    else:
        db.conn.execute("COMMIT")


