"""Uploads: the durable record of every delivery from a hub, its state, and its append-only journal."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from sqlite_utils import Database

from gate.errors import GateError
from gate.record.db import writing

log = logging.getLogger("gate.uploads")

HUB_FIELDS = ("hub", "model_id", "version_id", "uploader", "title", "description")
LIST_FIELDS = ("tags", "trigger_words")


class UploadState(StrEnum):
    RECEIVED = "received"
    SCANNING = "scanning"
    DECIDED = "decided"
    REFUSED = "refused"  # intake refused the file
    FAILED = "failed"  # the scan itself failed after its retries


class UploadNotFound(GateError):
    code = "upload_not_found"


class MetaError(GateError):
    code = "meta_invalid"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_meta(raw: object) -> dict:
    """Validate a hub's record of an upload: known string fields, lists of strings, bounded sizes."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MetaError("meta must be a JSON object")
    meta: dict = {}
    for key in HUB_FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str | int) or isinstance(value, bool) or len(str(value)) > 10_000:
            raise MetaError(f"meta.{key} must be a string of at most 10,000 characters")
        meta[key] = str(value)
    for key in LIST_FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        if not (isinstance(value, list) and len(value) <= 500
                and all(isinstance(v, str) and len(v) < 500 for v in value)):
            raise MetaError(f"meta.{key} must be a list of at most 500 short strings")
        meta[key] = value
    return meta


def delivery_key(source: str, meta: dict, file_sha256: str, extra: str = "") -> str:
    """Identifies a delivery across retries: the hub's record of it and the bytes delivered."""
    parts = [source, meta.get("hub", ""), meta.get("model_id", ""), meta.get("version_id", ""), file_sha256, extra]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Recorded:
    upload: dict
    created: bool


def record_upload(db: Database, source: str, meta: dict, file_path: Path, file_sha256: str, file_size: int,
                  filename: str, extra_key: str = "", previews: list[dict] = ()) -> Recorded:
    """Record a delivery durably (committed before the hub is answered); a retried delivery returns the first."""
    key = delivery_key(source, meta, file_sha256, extra_key)
    upload_id = f"up_{secrets.token_hex(8)}"
    now = _now()
    row = {
        "id": upload_id, "source": source, "delivery_key": key, **{k: meta.get(k) for k in HUB_FIELDS},
        "tags": json.dumps(meta.get("tags", []), ensure_ascii=False),
        "trigger_words": json.dumps(meta.get("trigger_words", []), ensure_ascii=False),
        "filename": filename[:500], "file_path": str(file_path), "file_sha256": file_sha256, "file_size": file_size,
        "state": UploadState.RECEIVED, "attempts": 0, "created_at": now, "updated_at": now,
    }
    # Plain SQL on this path (no table introspection): it is the one every hub delivery waits on.
    with writing(db):  # the check and the insert under one write lock: concurrent retries make one upload
        existing = db.execute("SELECT * FROM uploads WHERE delivery_key = ?", [key])
        columns = [c[0] for c in existing.description]
        if (first := existing.fetchone()) is not None:
            return Recorded(dict(zip(columns, first, strict=True)), False)
        db.execute(f"INSERT INTO uploads ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        journal(db, upload_id, "gate", "received", None, UploadState.RECEIVED, {"source": source})
        if previews:  # the hub's preview images (gate.images.previews), with the upload or not at all
            db["upload_previews"].insert_all([{**row, "upload_id": upload_id} for row in previews])
    _log_state(row)
    return Recorded({**dict.fromkeys(columns), "generation": 0, **row}, True)


def _log_state(upload: dict) -> None:
    """One line per state change, key=value, for operators following scans in the log."""
    fields = {"upload": upload["id"], "state": upload["state"],
              "stage": upload.get("stage") if upload["state"] == UploadState.SCANNING else None,
              "verdict": upload.get("verdict"), "file": upload.get("filename")}
    try:
        fields["seconds"] = round((datetime.now(UTC) - datetime.fromisoformat(upload["created_at"])).total_seconds(), 1)
    except (TypeError, ValueError):
        pass
    log.info(" ".join(f"{key}={_logfmt(value)}" for key, value in fields.items() if value is not None))


def _logfmt(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=') else text


def journal(db: Database, upload_id: str, actor: str, action: str, before: str | None, after: str | None,
            detail: dict) -> None:
    """One entry in an upload's append-only journal (call inside the transaction that made the change)."""
    db.execute("INSERT INTO upload_events (upload_id, at, actor, action, from_state, to_state, detail) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)",
               [upload_id, _now(), actor, action, before, after, json.dumps(detail, ensure_ascii=False)])


class Stage(StrEnum):
    """Where a scan is, within the scanning state: what the status API's progress reports."""

    SCREENING = "screening"  # intake and the static screens (names, blocklist, repeats)
    PROBING = "probing"  # queued for a probe worker, or rendering there
    PROBING_CATALOGUE = "probing_catalogue"  # the same, on the back catalogue's lane (behind live uploads)
    CONCLUDING = "concluding"  # matching the renders against the registry and deciding


def enter_stage(db: Database, upload_id: str, stage: Stage, detail: dict | None = None) -> None:
    """A scan moves on within the scanning state: journalled and logged like a change of state."""
    now = _now()
    with writing(db):
        db.execute("UPDATE uploads SET stage = ?, stage_at = ?, updated_at = ? WHERE id = ?",
                   [stage, now, now, upload_id])
        journal(db, upload_id, "worker", str(stage), UploadState.SCANNING, UploadState.SCANNING, detail or {})
    _log_state(get_upload(db, upload_id))


def get_upload(db: Database, upload_id: str) -> dict:
    rows = list(db["uploads"].rows_where("id = ?", [upload_id]))
    if not rows:
        raise UploadNotFound(f"no upload {upload_id!r}")
    return rows[0]


def transition(db: Database, upload_id: str, to_state: UploadState, actor: str, action: str,
               changes: dict | None = None, detail: dict | None = None) -> dict:
    """Move an upload to a new state and journal it, in one transaction."""
    with writing(db):
        before = get_upload(db, upload_id)["state"]
        update_upload(db, upload_id, {**(changes or {}), "state": to_state, "updated_at": _now()})
        journal(db, upload_id, actor, action, before, to_state, detail or {})
    return get_upload(db, upload_id)


def update_upload(db: Database, upload_id: str, changes: dict) -> dict:
    """Change an upload's row. The moderators' queue is a view of these rows, and this is where an upload
    enters it: a decided upload whose verdict becomes quarantine is 'quarantined' (unless it is in the queue
    already), and whatever puts it in (a quarantine, a dispute) fills the queue's sort and filter fields from
    its strongest match. Returns the row as it is now."""
    with writing(db):
        before = get_upload(db, upload_id)
        db["uploads"].update(upload_id, changes)
        after = get_upload(db, upload_id)
        entering = {}
        if ("verdict" in changes and after["verdict"] == "quarantine" and after["state"] == UploadState.DECIDED
                and after["review_status"] is None and before["verdict"] != "quarantine"):
            entering["review_status"] = "quarantined"
        if before["review_status"] is None and (entering or after["review_status"] is not None):
            entering.update(_queue_fields(db, after))
        if entering:
            db["uploads"].update(upload_id, entering)
            after = get_upload(db, upload_id)
    if after["state"] != before["state"] or after["verdict"] != before["verdict"]:
        _log_state(after)
    return after


def _queue_fields(db: Database, upload: dict) -> dict:
    """The queue's sort and filter fields: the strongest match's score (0 when nothing matched: not probed,
    blocklisted), its character and that character's rights holder."""
    matches = [m for m in json.loads(upload["matches"] or "[]") if isinstance(m, dict)]
    top = max(matches, key=lambda m: m.get("best_score") or 0.0, default=None)
    character = top.get("character") if top else None
    holder = db.execute("select rights_holder from characters where id = ?", [character]).fetchone() \
        if character else None
    return {"review_score": float(top.get("best_score") or 0.0) if top else 0.0, "review_character": character,
            "review_rights_holder": holder[0] if holder else None}


def pending(db: Database) -> list[str]:
    """Uploads accepted but not yet decided: after a crash, these are queued again."""
    return [row["id"] for row in db["uploads"].rows_where(
        "state in (?, ?)", [UploadState.RECEIVED, UploadState.SCANNING], order_by="created_at")]


def status(upload: dict) -> dict:
    """The answer a hub gets for GET /v1/uploads/<id>."""
    answer = {
        "id": upload["id"], "state": upload["state"], "verdict": upload["verdict"],
        "reasons": json.loads(upload["reasons"] or "[]"), "matches": json.loads(upload["matches"] or "[]"),
        "probe_set": upload["probe_set"], "file_sha256": upload["file_sha256"], "tensor_hash": upload["tensor_hash"],
        "model_id": upload["model_id"], "version_id": upload["version_id"], "created_at": upload["created_at"],
        "decided_at": upload["decided_at"],
    }
    if upload.get("likelihood_scope"):  # the registry version the decision's likelihood evidence came from
        scope = json.loads(upload["likelihood_scope"])
        answer["registry"] = {"version": scope.get("registry"), "characters": scope.get("characters"),
                              "shortlisted": scope.get("shortlisted"), "measured": scope.get("measured", [])}
    if upload["error_code"]:
        answer["error"] = {"code": upload["error_code"], "message": upload["error_message"]}
    return answer


def hub_message(upload: dict) -> dict:
    """What a callback tells the hub about an upload: its status, as GET /v1/uploads/<id> answers without links."""
    return {key: value for key, value in status(upload).items() if key != "evidence_url"}


def hub_meta(upload: dict) -> dict:
    """What the hub said of an upload, as the scan screens it: title, tags, trigger words, description."""
    return {"title": upload["title"], "tags": json.loads(upload["tags"] or "[]"),
            "trigger_words": json.loads(upload["trigger_words"] or "[]"), "description": upload["description"],
            "hub": upload["hub"], "uploader": upload["uploader"]}


def store_file(spool: Path, store: Path, sha256: str, suffix: str = ".safetensors") -> Path:
    """Move a spooled file into a content-addressed store (same bytes, one file): an upload, an image set."""
    target = store / sha256[:2] / f"{sha256}{suffix}"
    if not target.parent.is_dir():  # a stat: mkdir on an existing directory costs a metadata write on some filesystems
        target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        spool.unlink(missing_ok=True)
    else:
        os.replace(spool, target)
    return target
