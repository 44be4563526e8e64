"""Moderators deciding quarantined image sets: the list, one set's evidence, and a decision (allow or block,
with a reason) made in one transaction with its audit entry and the hub's message."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlite_utils import Database

from gate.images.record import get_set, set_status
from gate.record import audit, outbox
from gate.record.audit import Actor
from gate.record.db import writing
from gate.review.queue import ReviewError, check_reason

ACTIONS = ("allow", "block")


def quarantined(db: Database, limit: int = 200) -> list[dict]:
    """Sets waiting for a person, oldest first (they have waited longest)."""
    rows = db["image_sets"].rows_where("review_status = 'quarantined'", order_by="created_at", limit=limit)
    return [{**row, "reasons": json.loads(row["reasons"] or "[]")} for row in rows]


def waiting(db: Database) -> int:
    return db.execute("select count(*) from image_sets where review_status = 'quarantined'").fetchone()[0]


def _snapshot(row: dict) -> dict:
    return {"verdict": row["verdict"], "review_status": row["review_status"]}


def decide_set(db: Database, actor: Actor, set_id: str, action: str, reason: str) -> dict:
    """Allow or block a quarantined set; the audit log and the hub hear of it in the same transaction."""
    if action not in ACTIONS:
        raise ReviewError(f"action must be one of {', '.join(ACTIONS)}", "action_invalid")
    reason = check_reason(reason)
    with writing(db):
        before = get_set(db, set_id)
        if before["review_status"] != "quarantined":
            raise ReviewError(f"image set {set_id} is not waiting for a decision", "not_in_queue")
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        db["image_sets"].update(set_id, {"verdict": action, "review_status": None, "reviewed_by": actor.name,
                                         "reviewed_at": now, "decided_at": now})
        after = get_set(db, set_id)
        audit.record(db, actor, f"decision.{action}", "image_set", set_id, reason, _snapshot(before),
                     _snapshot(after))
        outbox.enqueue(db, set_id, "images.decided",
                       {**set_status(db, after), "review": {"action": action, "reason": reason, "at": now}})
    return after
