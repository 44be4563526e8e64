"""The system of record: SQLite in WAL mode through sqlite-utils, its schema as migrations applied on open."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("gate")


@migrations()
def m001_registry(db: Database) -> None:
    db["characters"].create(
        {"id": str, "name": str, "aliases": str, "rights_holder": str, "policy": str, "status": str,
         "description": str, "created_at": str, "updated_at": str},
        pk="id",
    )
    db["character_references"].create(
        {"id": int, "character_id": str, "path": str, "sha256": str, "width": int, "height": int,
         "created_at": str},
        pk="id", foreign_keys=[("character_id", "characters", "id")],
    )
    db["character_references"].create_index(["character_id", "sha256"], unique=True)
    # Embeddings depend on the embedder, so they are keyed by it and recomputed when it changes.
    db["reference_embeddings"].create(
        {"reference_id": int, "embedder": str, "vector": bytes},
        pk=("reference_id", "embedder"), foreign_keys=[("reference_id", "character_references", "id")],
    )
    db["blocklist"].create({"tensor_hash": str, "reason": str, "source": str, "created_at": str},
                           pk="tensor_hash")


@migrations()
def m002_uploads(db: Database) -> None:
    db["uploads"].create(
        {"id": str, "source": str, "delivery_key": str, "hub": str, "model_id": str, "version_id": str,
         "uploader": str, "title": str, "tags": str, "description": str, "trigger_words": str, "filename": str,
         "file_path": str, "file_sha256": str, "file_size": int, "tensor_hash": str, "state": str, "verdict": str,
         "reasons": str, "matches": str, "probe_set": str, "error_code": str, "error_message": str,
         "attempts": int, "created_at": str, "updated_at": str, "decided_at": str},
        pk="id", defaults={"attempts": 0},
    )
    # Hubs retry: the same delivery (same hub record and the same bytes) must be one upload.
    db["uploads"].create_index(["delivery_key"], unique=True)
    db["uploads"].create_index(["state"])
    # Append-only journal of every state change: who, when, what, why, before and after.
    db["upload_events"].create(
        {"id": int, "upload_id": str, "at": str, "actor": str, "action": str, "from_state": str, "to_state": str,
         "detail": str},
        pk="id", foreign_keys=[("upload_id", "uploads", "id")],
    )
    db["upload_events"].create_index(["upload_id"])


@migrations()
def m003_outbox(db: Database) -> None:
    # Messages to hubs (decisions, dispute outcomes), written in the same transaction as the change they report
    # and delivered later with retries, so a hub that is down never loses a decision.
    db["outbox"].create(
        {"id": int, "upload_id": str, "event": str, "payload": str, "state": str, "attempts": int,
         "next_attempt_at": str, "last_error": str, "created_at": str, "delivered_at": str},
        pk="id", defaults={"attempts": 0, "state": "pending"},
    )
    db["outbox"].create_index(["state", "next_attempt_at"])


@migrations()
def m004_scan_generation(db: Database) -> None:
    # Which run of an upload's scan pipeline is live: a run lost to a killed worker or a Redis restart is
    # replaced by the next generation, and jobs of older generations do nothing.
    db["uploads"].add_column("generation", int, not_null_default=0)
    # Seconds the probe worker spent rendering and embedding this upload (the GPU's cost of a LoRA).
    db["uploads"].add_column("probe_seconds", float)


@migrations()
def m301_deliveries(db: Database) -> None:
    # Deliveries that name weights elsewhere (a Hugging Face webhook, a URL upload): recorded before they are
    # answered, then fetched on the intake queue; each becomes zero or more uploads.
    db["deliveries"].create(
        {"id": str, "kind": str, "delivery_key": str, "payload": str, "repo_id": str, "revision": str, "url": str,
         "meta": str, "state": str, "reason": str, "upload_ids": str, "error_code": str, "error_message": str,
         "attempts": int, "generation": int, "created_at": str, "updated_at": str},
        pk="id", defaults={"attempts": 0, "generation": 0, "upload_ids": "[]"},
    )
    db["deliveries"].create_index(["delivery_key"], unique=True)
    db["deliveries"].create_index(["state"])


@migrations()
def m302_hub_actions(db: Database) -> None:
    # What the gate did (or tried to do) to a hub after a block: one row per action, retried until done.
    db["hub_actions"].create(
        {"id": int, "upload_id": str, "hub": str, "repo_id": str, "action": str, "state": str, "attempts": int,
         "next_attempt_at": str, "last_error": str, "result": str, "created_at": str, "done_at": str},
        pk="id", defaults={"attempts": 0, "state": "pending"},
    )
    db["hub_actions"].create_index(["upload_id", "action"], unique=True)
    db["hub_actions"].create_index(["state", "next_attempt_at"])


def open_db(path: str | Path) -> Database:
    """Open (creating if needed) the record and bring its schema up to date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(path)
    db.enable_wal()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    migrations.apply(db)
    return db


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
