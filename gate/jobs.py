"""Jobs: scanning an accepted upload, and the dispatcher that runs them.

Jobs take upload ids, not objects; they re-read what they need from the record. Without REDIS_URL (the
embedded default) they run in one background thread of the web process, so `gate serve` works on a
laptop; uploads still pending at start (a crash, a restart) are queued again, so nothing accepted is lost.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from datetime import UTC, datetime

from gate.config import Settings
from gate.db import open_db
from gate.intake import inspect_file
from gate.uploads import UploadState, get_upload, pending, transition

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
RETRY_SECONDS = (5, 30)


def process_upload(settings: Settings, db, upload_id: str, scanner_factory) -> dict:
    """Scan one upload and record the outcome; raises on failure so the dispatcher can retry."""
    upload = get_upload(db, upload_id)
    if upload["state"] not in (UploadState.RECEIVED, UploadState.SCANNING):
        log.info("upload %s is already %s; nothing to do", upload_id, upload["state"])
        return upload
    transition(db, upload_id, UploadState.SCANNING, "worker", "scan started",
               {"attempts": (upload["attempts"] or 0) + 1})
    inspection = inspect_file(upload["file_path"], settings.intake)
    if not inspection.ok:
        error = inspection.error
        return transition(db, upload_id, UploadState.REFUSED, "intake", "refused",
                          {"error_code": error.code, "error_message": error.message,
                           "decided_at": datetime.now(UTC).isoformat(timespec="milliseconds")},
                          {"code": error.code})
    hub_meta = {"title": upload["title"], "tags": json.loads(upload["tags"] or "[]"),
                "trigger_words": json.loads(upload["trigger_words"] or "[]"), "description": upload["description"]}
    scanner = scanner_factory()
    result = scanner.scan(upload["file_path"], filename=upload["filename"], hub_meta=hub_meta, inspection=inspection)
    answer = result.to_dict(scanner.characters)
    if result.decision is not None:
        from gate.evidence import write_evidence

        write_evidence(result, scanner.characters, evidence_dir(settings, upload_id))
    return transition(db, upload_id, UploadState.DECIDED, "gate", f"decided {result.verdict}", {
        "verdict": result.verdict, "reasons": json.dumps(answer["reasons"], ensure_ascii=False),
        "matches": json.dumps(answer["matches"], ensure_ascii=False), "probe_set": result.probe_set,
        "tensor_hash": inspection.fingerprints.tensor_hash,
        "decided_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }, {"verdict": result.verdict, "reasons": [r["kind"] for r in answer["reasons"]]})


def evidence_dir(settings: Settings, upload_id: str):
    return settings.data_dir / "evidence" / upload_id


class InProcessDispatcher:
    """One worker thread in this process, loading the probe engine on its first scan."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.jobs: queue.Queue[str] = queue.Queue()
        self._scanner = None
        self._thread = threading.Thread(target=self._run, name="gate-worker", daemon=True)
        self._thread.start()
        for upload_id in pending(open_db(settings.db_path)):
            self.enqueue(upload_id)

    def enqueue(self, upload_id: str) -> None:
        self.jobs.put(upload_id)

    def depth(self) -> int:
        return self.jobs.qsize()

    def health(self) -> str:
        return "ok" if self._thread.is_alive() else "worker thread stopped"

    def _scanner_factory(self):
        if self._scanner is None:
            from gate.runtime import load_scanner, open_record

            self._scanner = load_scanner(self.settings, open_record(self.settings))
        return self._scanner

    def _run(self) -> None:
        db = open_db(self.settings.db_path)
        while True:
            upload_id = self.jobs.get()
            try:
                process_upload(self.settings, db, upload_id, self._scanner_factory)
            except Exception as exc:  # noqa: BLE001 - a failed job is retried, then recorded as failed
                log.exception("scan of %s failed", upload_id)
                self._retry_or_fail(db, upload_id, exc)

    def _retry_or_fail(self, db, upload_id: str, exc: Exception) -> None:
        attempts = get_upload(db, upload_id)["attempts"] or 0
        attempts += 1
        db["uploads"].update(upload_id, {"attempts": attempts})
        if attempts < MAX_ATTEMPTS:
            transition(db, upload_id, UploadState.RECEIVED, "worker", "retry scheduled", detail={"error": str(exc)})
            delay = RETRY_SECONDS[min(attempts - 1, len(RETRY_SECONDS) - 1)]
            threading.Timer(delay, self.enqueue, [upload_id]).start()
        else:
            transition(db, upload_id, UploadState.FAILED, "worker", "failed",
                       {"error_code": "scan_failed", "error_message": str(exc)[:500]}, {"error": str(exc)[:500]})


_dispatchers: dict[str, InProcessDispatcher] = {}
_lock = threading.Lock()


def dispatcher(settings: Settings | None = None) -> InProcessDispatcher:
    """The dispatcher for this process and record (one per database file)."""
    if settings is None:
        from gate.web.record import settings as current

        settings = current()
    key = str(settings.db_path)
    with _lock:
        if key not in _dispatchers:
            _dispatchers[key] = InProcessDispatcher(settings)
        return _dispatchers[key]
