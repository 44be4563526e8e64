"""What moderators' decisions teach the gate: a blocked LoRA's weights join the blocklist; an allowed false
positive is remembered per character (`cleared`), so the same evidence does not quarantine the same weights again.
Detection reads it back (`cleared_characters`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlite_utils import Database

from gate.record import audit
from gate.record.audit import Actor
from gate.registry import blocklist


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def flagged_characters(upload: dict) -> set[str]:
    """The characters (or '*' for reasons without one) behind an upload's quarantine or block."""
    flagged = set()
    for reason in json.loads(upload["reasons"] or "[]"):
        if reason.get("verdict") in ("quarantine", "block") and reason.get("kind") != "blocklist":
            flagged.add(reason.get("character") or "*")
    return flagged or {"*"}


def feed_back_block(db: Database, actor: Actor, upload: dict, reason: str) -> None:
    """A blocked LoRA's weights join the blocklist: a re-upload (any metadata) is blocked without rendering."""
    tensor_hash = upload["tensor_hash"]
    if not tensor_hash:
        return
    before = blocklist.contains(db, tensor_hash)
    blocklist.add(db, tensor_hash, f"{reason} (upload {upload['id']})", f"review:{actor.name}")
    db.execute("delete from cleared where tensor_hash = ?", [tensor_hash])
    audit.record(db, actor, "blocklist.add", "tensor_hash", tensor_hash, reason, before,
                 blocklist.contains(db, tensor_hash))


def feed_back_allow(db: Database, actor: Actor, upload: dict, reason: str) -> None:
    """An allowed false positive is remembered, so the same evidence does not quarantine the same weights again;
    if its weights were blocklisted (a dispute won), they come off the list."""
    tensor_hash = upload["tensor_hash"]
    if not tensor_hash:
        return
    now = _now_iso()
    rows = [{"tensor_hash": tensor_hash, "character_id": character, "upload_id": upload["id"],
             "cleared_by": actor.name, "reason": reason, "created_at": now}
            for character in sorted(flagged_characters(upload))]
    db["cleared"].insert_all(rows, replace=True)
    audit.record(db, actor, "cleared.add", "tensor_hash", tensor_hash, reason, None,
                 {"characters": [r["character_id"] for r in rows]})
    listed = blocklist.contains(db, tensor_hash)
    if listed:
        db.execute("delete from blocklist where tensor_hash = ?", [tensor_hash])
        audit.record(db, actor, "blocklist.remove", "tensor_hash", tensor_hash, reason, listed, None)


def cleared_characters(db: Database, tensor_hash: str | None) -> set[str]:
    """Characters a moderator cleared these weights of ('*': reasons without a character)."""
    if not tensor_hash:
        return set()
    return {row[0] for row in db.execute("select character_id from cleared where tensor_hash = ?",
                                         [tensor_hash]).fetchall()}
