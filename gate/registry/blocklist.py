"""Tensor-content hashes of blocked LoRAs: a re-upload with edited metadata is blocked without rendering."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlite_utils import Database

from gate.errors import GateError
from gate.record.db import writing

_HASH = re.compile(r"^[0-9a-f]{64}$")


def add(db: Database, tensor_hash: str, reason: str, source: str) -> None:
    """Add a tensor hash (as `gate inspect` reports it) with why and on whose word."""
    tensor_hash = tensor_hash.strip().lower()
    if not _HASH.match(tensor_hash):
        raise GateError(f"{tensor_hash!r} is not a sha256 tensor hash", "hash_invalid")
    if not reason.strip():
        raise GateError("a blocklist entry needs a reason", "reason_missing")
    with writing(db):
        db["blocklist"].insert({"tensor_hash": tensor_hash, "reason": reason.strip(), "source": source,
                                "created_at": datetime.now(UTC).isoformat(timespec="seconds")}, replace=True)


def entries(db: Database) -> list[dict]:
    return list(db["blocklist"].rows_where(order_by="created_at"))


def contains(db: Database, tensor_hash: str) -> dict | None:
    rows = list(db["blocklist"].rows_where("tensor_hash = ?", [tensor_hash]))
    return rows[0] if rows else None
