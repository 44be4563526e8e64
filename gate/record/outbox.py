"""The outbox: messages owed to hubs (a decision, a dispute's outcome), recorded with the change they report.

Writers call `enqueue` inside their own transaction; delivery (signed callbacks with retries) reads the pending
rows later, so a hub that is down or slow never loses a message and never slows a decision.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlite_utils import Database


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def enqueue(db: Database, upload_id: str, event: str, payload: dict) -> int:
    """Owe the hub a message about an upload; returns the message id. Each carries the audit log's head as it
    stands, so hubs hold anchors the gate cannot rewrite (`gate audit verify --anchor`)."""
    from gate.record.audit import head

    now = _now()
    payload = {**payload, "audit_head": head(db)}
    row = {"upload_id": upload_id, "event": event, "payload": json.dumps(payload, ensure_ascii=False),
           "state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
    return db["outbox"].insert(row).last_pk


def pending_messages(db: Database, now: str | None = None, limit: int = 100) -> list[dict]:
    """Messages due for a delivery attempt, oldest first."""
    return list(db["outbox"].rows_where("state = 'pending' and next_attempt_at <= ?", [now or _now()],
                                        order_by="id", limit=limit))
