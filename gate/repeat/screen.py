"""Repeat infringement: re-uploads of blocked LoRAs, exact or transformed, and uploaders who keep trying.

During screening (before anything is rendered) every accepted LoRA's weight fingerprint is stored, and
looked up among the fingerprints of LoRAs the gate blocked or quarantined for a character:

- the same tensor hash as a blocked upload is a block, exactly like a blocklist entry;
- a fingerprint that matches a flagged one (near-duplicate or contained in a merge) is quarantined, with
  the matched upload, its tensor hash and the scores in the reason; the scan then needs no rendering;
- with `repeat.offender_blocks` set, uploads of an uploader with that many blocks go to quarantine.

Whether a stored LoRA is flagged is read from the record at lookup time, so a moderator's later decision
counts at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlite_utils import Database

from gate.config import IntakeLimits, Settings
from gate.intake import Inspection
from gate.intake.header import read_header
from gate.record.db import writing
from gate.repeat.weightprint import VERSION, Weightprint, WeightprintError, WeightprintIndex, compare, from_layout

log = logging.getLogger(__name__)
RECENT = 10


@dataclass(frozen=True)
class NearDuplicate:
    """A flagged LoRA that an upload's fingerprint matches."""

    tensor_hash: str
    upload_id: str | None  # None when it is flagged by a blocklist entry only
    verdict: str  # what the flagged LoRA got: block or quarantine
    character_id: str | None
    kind: str  # near_duplicate (same ΔW) or contained (merged into the upload)
    similarity: float
    containment: float
    modules_shared: int

    @property
    def score(self) -> float:
        return max(self.similarity, self.containment)

    def to_dict(self) -> dict:
        return {"match_kind": self.kind, "matched_upload": self.upload_id, "matched_tensor_hash": self.tensor_hash,
                "matched_verdict": self.verdict, "similarity": round(self.similarity, 4),
                "containment": round(self.containment, 4), "score": round(self.score, 4),
                "modules_shared": self.modules_shared}


def fingerprint_inspected(inspection: Inspection, limits: IntakeLimits) -> Weightprint:
    """The fingerprint of a file intake accepted, read from its validated byte ranges.

    The header is read again from the open file and must be the one intake validated: a file replaced
    since is refused rather than trusted."""
    with open(inspection.path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if size != inspection.file_size or read_header(stream, size, limits) != inspection.header:
            raise WeightprintError("the file changed since intake read it", "file_changed")
        return from_layout(stream.fileno(), inspection.header, inspection.layout)


def store(db: Database, tensor_hash: str, file_sha256: str, print_: Weightprint) -> None:
    """Keep a scanned LoRA's fingerprint (once per tensor content)."""
    with writing(db):
        db["weightprints"].insert({"tensor_hash": tensor_hash, "file_sha256": file_sha256, **print_.to_blobs(),
                                   "skipped": len(print_.skipped),
                                   "created_at": datetime.now(UTC).isoformat(timespec="seconds")}, ignore=True)


def stored(db: Database, tensor_hash: str) -> Weightprint | None:
    rows = list(db["weightprints"].rows_where("tensor_hash = ? and version = ?", [tensor_hash, VERSION]))
    return Weightprint.from_blobs(rows[0]) if rows else None


def _flagging_character(upload: dict) -> str | None:
    """The character a quarantined upload was held for, if any (a name in metadata alone flags nothing)."""
    for reason in json.loads(upload.get("reasons") or "[]"):
        if reason.get("character") and reason.get("verdict") in ("quarantine", "block"):
            return reason["character"]
    return None


def flagged(db: Database, tensor_hashes: list[str]) -> dict[str, dict]:
    """For each tensor hash that is flagged now: the upload (or blocklist entry) that flags it."""
    if not tensor_hashes:
        return {}
    marks = ", ".join("?" for _ in tensor_hashes)
    found: dict[str, dict] = {}
    uploads = db.query(f"select id, tensor_hash, verdict, reasons from uploads where tensor_hash in ({marks}) "
                       "and verdict in ('block', 'quarantine') order by decided_at", tensor_hashes)
    for upload in uploads:
        character = _flagging_character(upload)
        if upload["verdict"] == "block" or character:
            current = found.get(upload["tensor_hash"])  # the earliest block, else the earliest quarantine
            if current is None or (current["verdict"] != "block" and upload["verdict"] == "block"):
                found[upload["tensor_hash"]] = {"upload_id": upload["id"], "verdict": upload["verdict"],
                                                "character_id": character}
    for entry in db.query(f"select tensor_hash from blocklist where tensor_hash in ({marks})", tensor_hashes):
        if found.get(entry["tensor_hash"], {}).get("verdict") != "block":  # an operator's entry, no upload blocked
            found[entry["tensor_hash"]] = {"upload_id": None, "verdict": "block", "character_id": None}
    return found


def blocked_upload(db: Database, tensor_hash: str) -> dict | None:
    """An earlier upload with exactly this tensor content that was blocked: the exact re-upload case."""
    rows = list(db.query("select id, decided_at from uploads where tensor_hash = ? and verdict = 'block' "
                         "order by decided_at limit 1", [tensor_hash]))
    return rows[0] if rows else None


def uploader_history(db: Database, hub: str | None, uploader: str, limit: int = RECENT,
                     offender_blocks: int = 0) -> dict:
    """An uploader's record on one hub: counts by verdict and state, and their most recent uploads."""
    where, params = ("hub = ? and uploader = ?", [hub, uploader]) if hub is not None else (
        "hub is null and uploader = ?", [uploader])
    counts = {row["verdict"] or row["state"]: row["n"] for row in db.query(
        f"select verdict, state, count(*) as n from uploads where {where} group by verdict, state", params)}
    recent = [{"id": row["id"], "title": row["title"], "state": row["state"], "verdict": row["verdict"],
               "created_at": row["created_at"], "decided_at": row["decided_at"],
               "reasons": [reason.get("kind") for reason in json.loads(row["reasons"] or "[]")]}
              for row in db.query(f"select * from uploads where {where} order by created_at desc limit ?",
                                  [*params, limit])]
    blocked = counts.get("block", 0)
    return {"hub": hub, "uploader": uploader, "uploads": sum(counts.values()), "blocked": blocked,
            "quarantined": counts.get("quarantine", 0), "allowed": counts.get("allow", 0),
            "refused": counts.get("refused", 0), "recent": recent,
            "repeat_offender": bool(offender_blocks) and blocked >= offender_blocks}


class RepeatScreen:
    """The scanner's repeat-infringement step: its fingerprint index, loaded from the record and kept current."""

    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        self.index = WeightprintIndex()
        self._loaded_rowid = 0

    def refresh(self) -> None:
        """Load fingerprints stored since the last look (by this or any other process)."""
        rows = list(self.db.query("select rowid, tensor_hash, vector from weightprints where rowid > ? "
                                  "and version = ? order by rowid", [self._loaded_rowid, VERSION]))
        if rows:
            self.index.add_many([r["tensor_hash"] for r in rows],
                                np.array([np.frombuffer(r["vector"], dtype="<f4") for r in rows]))
            self._loaded_rowid = rows[-1]["rowid"]

    def find(self, print_: Weightprint) -> list[NearDuplicate]:
        """Flagged LoRAs this fingerprint matches, strongest first: the index's coarse cut, then exact scores."""
        self.refresh()
        limits = self.settings.repeat
        candidates = [key for key, _ in self.index.search(print_.vector, limits.candidates)]
        marks = flagged(self.db, candidates)
        found = []
        for tensor_hash in candidates:
            mark = marks.get(tensor_hash)
            other = stored(self.db, tensor_hash) if mark else None
            if other is None:
                continue
            scores = compare(print_, other)
            if scores.similarity >= limits.similarity:
                kind = "near_duplicate"
            elif scores.containment >= limits.containment:
                kind = "contained"
            else:
                continue
            found.append(NearDuplicate(tensor_hash, mark["upload_id"], mark["verdict"], mark["character_id"], kind,
                                       scores.similarity, scores.containment, scores.modules_shared))
        return sorted(found, key=lambda match: -match.score)

    def screen(self, result, hub_meta: dict | None = None) -> None:
        """Fill a screened result's repeat signals (exact block, near-duplicates, repeat offender)."""
        started = time.perf_counter()
        prints = result.inspection.fingerprints
        if not result.blocklisted:
            earlier = blocked_upload(self.db, prints.tensor_hash)
            if earlier:
                result.blocklisted = f"{prints.tensor_hash[:16]}…, upload {earlier['id']} was blocked"
        try:
            print_ = fingerprint_inspected(result.inspection, self.settings.intake)
        except (WeightprintError, OSError) as exc:
            code = getattr(exc, "code", "file_unreadable")
            log.info("no weight fingerprint for %s: %s %s", result.path, code, exc)
        else:
            if not result.blocklisted:
                result.near_duplicates = self.find(print_)
            store(self.db, prints.tensor_hash, prints.file_sha256, print_)
        uploader = (hub_meta or {}).get("uploader")
        if self.settings.repeat.offender_blocks and uploader:
            history = uploader_history(self.db, hub_meta.get("hub"), uploader, 3, self.settings.repeat.offender_blocks)
            if history["repeat_offender"]:
                result.repeat_offender = history
        result.timings["weightprint"] = time.perf_counter() - started
