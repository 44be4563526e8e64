"""Deliveries that name weights elsewhere (a Hugging Face webhook, a URL upload): their durable record.

A delivery is recorded (raw payload and all) before the sender is answered; the fetch happens later on the
intake queue (gate.pipeline.ingest) and turns it into uploads. States, each change journalled in the row's own fields:

    received → fetching → fetched (uploads created)        ignored (nothing to fetch, with a reason)
                        ↘ failed (a typed error code)     invalid (authenticated, but not JSON we can read)
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlite_utils import Database

from gate.errors import GateError
from gate.record.db import writing

MAX_PAYLOAD_CHARS = 256 * 1024


class DeliveryState(StrEnum):
    RECEIVED = "received"
    FETCHING = "fetching"
    FETCHED = "fetched"
    IGNORED = "ignored"
    FAILED = "failed"
    INVALID = "invalid"


LIVE_STATES = (DeliveryState.RECEIVED, DeliveryState.FETCHING)


class DeliveryNotFound(GateError):
    code = "delivery_not_found"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RecordedDelivery:
    delivery: dict
    created: bool


def record_delivery(db: Database, kind: str, key: str, payload: str, *, state: DeliveryState = DeliveryState.RECEIVED,
                    repo_id: str | None = None, revision: str | None = None, url: str | None = None,
                    meta: dict | None = None, reason: str | None = None, error: GateError | None = None
                    ) -> RecordedDelivery:
    """Record a delivery durably (committed before the sender is answered); the same delivery again is the first."""
    now = _now()
    row = {"id": f"dl_{secrets.token_hex(8)}", "kind": kind, "delivery_key": key,
           "payload": payload[:MAX_PAYLOAD_CHARS], "repo_id": repo_id, "revision": revision, "url": url,
           "meta": json.dumps(meta or {}, ensure_ascii=False), "state": state, "reason": reason, "upload_ids": "[]",
           "error_code": error.code if error else None, "error_message": error.message if error else None,
           "attempts": 0, "generation": 0, "created_at": now, "updated_at": now}
    with writing(db):  # the check and the insert under one write lock: concurrent redeliveries make one
        existing = list(db["deliveries"].rows_where("delivery_key = ?", [key]))
        if existing:
            return RecordedDelivery(existing[0], False)
        db["deliveries"].insert(row)
    return RecordedDelivery(get_delivery(db, row["id"]), True)


def get_delivery(db: Database, delivery_id: str) -> dict:
    rows = list(db["deliveries"].rows_where("id = ?", [delivery_id]))
    if not rows:
        raise DeliveryNotFound(f"no delivery {delivery_id!r}")
    return rows[0]


def update_delivery(db: Database, delivery_id: str, state: DeliveryState | None = None, **changes) -> dict:
    """Change a delivery's fields (and state) in one write."""
    if state is not None:
        changes["state"] = state
    if "upload_ids" in changes:
        changes["upload_ids"] = json.dumps(changes["upload_ids"])
    with writing(db):
        db["deliveries"].update(delivery_id, {**changes, "updated_at": _now()})
    return get_delivery(db, delivery_id)


def fail_delivery(db: Database, delivery_id: str, error: GateError, upload_ids: list[str] | None = None) -> dict:
    changes = {"error_code": error.code, "error_message": error.message[:500]}
    if upload_ids is not None:
        changes["upload_ids"] = upload_ids
    return update_delivery(db, delivery_id, DeliveryState.FAILED, **changes)


def status(db: Database, delivery: dict) -> dict:
    """The answer to GET /v1/deliveries/<id>: its state, why, and the uploads it became (with their state)."""
    from gate.record.uploads import UploadNotFound, get_upload
    from gate.record.uploads import status as upload_status

    uploads = []
    for upload_id in json.loads(delivery["upload_ids"] or "[]"):
        try:
            upload = get_upload(db, upload_id)
        except UploadNotFound:
            continue
        uploads.append({"filename": upload["filename"], **upload_status(upload)})
    answer = {"id": delivery["id"], "kind": delivery["kind"], "state": delivery["state"],
              "repo_id": delivery["repo_id"], "revision": delivery["revision"], "url": delivery["url"],
              "reason": delivery["reason"], "attempts": delivery["attempts"], "uploads": uploads,
              "created_at": delivery["created_at"], "updated_at": delivery["updated_at"]}
    if delivery["error_code"]:
        answer["error"] = {"code": delivery["error_code"], "message": delivery["error_message"]}
    return answer
