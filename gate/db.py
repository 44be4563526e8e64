"""The system of record: SQLite in WAL mode through sqlite-utils, its schema as migrations applied on open."""

from __future__ import annotations

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
