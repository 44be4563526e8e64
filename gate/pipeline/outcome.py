"""How an upload's scan ends, in the record: every path that decides an upload writes its outcome here.

A final state and the message owed to the hub are written in one transaction (`finish`), so a hub is told of
every decision exactly once, whichever path made it: a live scan (`record_decision`), a refusal at intake
(`refuse`), a failure (`fail`), a rescan or a back-catalogue screening changing a decided upload (`redecide`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from gate.catalogue import index
from gate.config import Settings
from gate.detection.evidence import write_evidence
from gate.record import outbox
from gate.record.db import writing
from gate.record.uploads import Stage, UploadState, get_upload, hub_message, transition

PROBE_TIMINGS = ("render_lora", "render_base", "embed")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def evidence_dir(settings: Settings, upload_id: str) -> Path:
    """Where an upload's evidence pages are kept."""
    return settings.data_dir / "evidence" / upload_id


def begin_scan(db: Database, upload: dict, how: str = "") -> None:
    """The upload is being scanned (one more attempt)."""
    transition(db, upload["id"], UploadState.SCANNING, "worker", f"scan started{how}",
               {"attempts": (upload["attempts"] or 0) + 1, "stage": Stage.SCREENING, "stage_at": _now()})


def finish(db: Database, upload_id: str, state: UploadState, actor: str, action: str, changes: dict,
           detail: dict) -> dict:
    """A final state, and the message owed to the hub about it, in one transaction."""
    with writing(db):
        upload = transition(db, upload_id, state, actor, action, {**changes, "decided_at": _now()}, detail)
        outbox.enqueue(db, upload_id, f"upload.{state}", hub_message(upload))
    return upload


def refuse(db: Database, upload_id: str, error) -> str:
    """Intake refused the file: its final state, with the code, and the hub told."""
    finish(db, upload_id, UploadState.REFUSED, "intake", "refused",
           {"error_code": error.code, "error_message": error.message}, {"code": error.code})
    return "refused"


def fail(db: Database, upload_id: str, actor: str, action: str, message: str, detail: dict,
         code: str = "scan_failed") -> str:
    """A scan that cannot finish: the upload is recorded as failed, visibly, rather than left waiting."""
    finish(db, upload_id, UploadState.FAILED, actor, action,
           {"error_code": code, "error_message": message[:500]}, detail)
    return "failed"


def decision_fields(result, characters: dict) -> dict:
    """The upload's columns that hold a decision: verdict, reasons, matches, the probe set and the weights."""
    answer = result.to_dict(characters)
    fields = {"verdict": result.verdict, "reasons": json.dumps(answer["reasons"], ensure_ascii=False),
              "matches": json.dumps(answer["matches"], ensure_ascii=False), "probe_set": result.probe_set,
              "tensor_hash": result.inspection.fingerprints.tensor_hash}
    scope = result.outcome.scope if result.outcome is not None else {}
    if scope.get("registry"):  # the registry version the likelihood probe measured, and how much of it
        fields["registry_version"] = scope["registry"]
        fields["likelihood_scope"] = json.dumps(scope, ensure_ascii=False)
    return fields


def record_decision(settings: Settings, db: Database, scanner, upload_id: str, result) -> str:
    """Judge a scanned upload (`scanner.conclude`), keep its evidence and renders, decide it and tell the hub."""
    scanner.conclude(result)
    if result.decision is not None:
        upload = get_upload(db, upload_id)
        write_evidence(result, scanner.characters, evidence_dir(settings, upload_id),
                       upload["title"] or upload["filename"], scanner.thresholds)
    index.record_scan(db, upload_id, result, scanner.engine.embedder_id)  # for back-catalogue screening
    fields = decision_fields(result, scanner.characters)
    finish(db, upload_id, UploadState.DECIDED, "gate", f"decided {result.verdict}", {
        **fields, "probe_seconds": sum(v for k, v in result.timings.items() if k in PROBE_TIMINGS) or None,
    }, {"verdict": result.verdict, "reasons": [r["kind"] for r in json.loads(fields["reasons"])]})
    return str(result.verdict)


def redecide(db: Database, upload_id: str, actor: str, action: str, changes: dict, detail: dict,
             notify: bool = True) -> dict:
    """A decided upload decided again (a rescan, a back-catalogue screening): the change journalled and, when
    `notify`, the hub told, in the caller's transaction."""
    updated = transition(db, upload_id, UploadState.DECIDED, actor, action, changes, detail)
    if notify:
        outbox.enqueue(db, upload_id, "upload.decided", hub_message(updated))
    return updated
