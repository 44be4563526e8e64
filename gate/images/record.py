"""Image sets in the record: one row per set a hub sent (its state, verdict and reasons), one per image with
its match, and each image's vector by sha256 and embedder (an image seen before is not embedded again)."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.errors import GateError
from gate.record.db import writing

LIVE = ("received", "screening")


class SetNotFound(GateError):
    code = "set_not_found"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def record_set(db: Database, kind: str, meta: dict, path: Path | None, sha256: str, size: int, filename: str,
               urls: list[str] | None = None) -> tuple[dict, bool]:
    """Record a set durably (before the hub is answered): its file, or the URLs to fetch it from (`sha256` then
    the list's); the same set sent again returns the first (False)."""
    key = hashlib.sha256(json.dumps([kind, meta.get("hub"), meta.get("model_id"), meta.get("version_id"), sha256])
                         .encode()).hexdigest()
    row = {"id": f"is_{secrets.token_hex(8)}", "kind": kind, "delivery_key": key, "hub": meta.get("hub"),
           "model_id": meta.get("model_id"), "uploader": meta.get("uploader"), "title": meta.get("title"),
           "filename": filename[:500], "file_path": str(path) if path else None, "file_sha256": sha256,
           "file_size": size, "urls": json.dumps(urls) if urls else None,
           "state": "received", "attempts": 0, "created_at": _now(), "updated_at": _now()}
    with writing(db):
        existing = list(db["image_sets"].rows_where("delivery_key = ?", [key]))
        if existing:
            return existing[0], False
        db["image_sets"].insert(row)
    return get_set(db, row["id"]), True


def get_set(db: Database, set_id: str) -> dict:
    rows = list(db["image_sets"].rows_where("id = ?", [set_id]))
    if not rows:
        raise SetNotFound(f"no image set {set_id!r}")
    return rows[0]


def update_set(db: Database, set_id: str, changes: dict) -> dict:
    with writing(db):
        db["image_sets"].update(set_id, {**changes, "updated_at": _now()})
    return get_set(db, set_id)


def known_vectors(db: Database, embedder: str, digests: list[str]) -> dict[str, np.ndarray]:
    """The vectors the record holds for these images (by sha256), for this embedder."""
    found: dict[str, np.ndarray] = {}
    unique = sorted(set(digests))
    for start in range(0, len(unique), 500):
        chunk = unique[start:start + 500]
        for row in db.execute(f"SELECT sha256, vector FROM image_vectors WHERE embedder = ? AND sha256 IN "
                              f"({', '.join('?' * len(chunk))})", [embedder, *chunk]):
            found[row[0]] = np.frombuffer(row[1], np.float32)
    return found


def keep_vectors(db: Database, embedder: str, vectors: dict[str, np.ndarray]) -> None:
    with writing(db):
        db["image_vectors"].upsert_all([{"sha256": digest, "embedder": embedder,
                                         "vector": np.asarray(vector, np.float32).tobytes()}
                                        for digest, vector in vectors.items()], pk=("sha256", "embedder"))


def set_status(db: Database, row: dict) -> dict:
    """The answer a hub gets for a set: state, verdict, reasons, and each image that matched."""
    answer = {"id": row["id"], "kind": row["kind"], "state": row["state"], "verdict": row["verdict"],
              "reasons": json.loads(row["reasons"] or "[]"), "file_sha256": row["file_sha256"],
              "model_id": row["model_id"], "created_at": row["created_at"], "decided_at": row["decided_at"],
              "counts": {"images": row["images"], "matched": row["matched"], "embedded": row["embedded"],
                         "refused": len(json.loads(row["refused"] or "[]"))},
              "refused": json.loads(row["refused"] or "[]")}
    if row["state"] == "decided":
        answer["matches"] = [
            {"position": r["position"], "name": r["name"], "sha256": r["sha256"], "character": r["character_id"],
             "score": r["score"],
             "strong": bool(r["strong"]), "reference": r["reference"],
             "region": json.loads(r["region"]) if r.get("region") else None,
             "reference_region": json.loads(r["reference_region"]) if r.get("reference_region") else None}
            for r in db["set_images"].rows_where("set_id = ? and character_id is not null", [row["id"]],
                                                 order_by="score desc", limit=200)]
    if row["error_code"]:
        answer["error"] = {"code": row["error_code"], "message": row["error_message"]}
    return answer
