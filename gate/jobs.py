"""The scan of an accepted upload as three queue jobs: intake (CPU) → probe (GPU, probes.jobs) → conclude (CPU).

Jobs take upload ids and plain JSON, never objects; they re-read what they need from the record, log why
they did nothing when they do nothing, and raise on failure so the queue retries them (then `job_failed`
records the upload as failed). Each pipeline run has a generation: the reconciler starts a new one when a
run was lost (a worker killed, Redis restarted), and a job of an older generation does nothing.
The GPU side (probes.jobs.probe_upload) never opens the record: it gets a request and hands back JSON.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from datetime import UTC, datetime

from gate import catalogue, outbox
from gate.config import Settings
from gate.db import open_db, writing
from gate.queues import INTAKE, PROBE, InProcessQueues, Queues, context, make_queues
from gate.uploads import UploadState, get_upload, transition

log = logging.getLogger(__name__)
PROBE_TIMINGS = ("render_lora", "render_base", "embed")
LIVE_STATES = (UploadState.RECEIVED, UploadState.SCANNING)
HANDOFF_BATCH = 200


def job_id(upload_id: str, generation: int, step: str) -> str:
    """A scan job's id (RQ allows letters, digits, '_' and '-'): one per upload, generation and step."""
    return f"{upload_id}-g{generation}-{step}"


def parse_job_id(value: str) -> tuple[str, int, str]:
    upload_id, generation, step = value.rsplit("-", 2)
    return upload_id, int(generation.lstrip("g")), step


def scan_job(upload_id: str, generation: int = 0) -> tuple[str, str, tuple, str]:
    """An accepted upload's first job (queue, function, arguments, job id): its intake."""
    return INTAKE, "gate.jobs.intake_upload", (upload_id, generation), job_id(upload_id, generation, "intake")


def start_scan(queues: Queues, upload_id: str, generation: int = 0) -> None:
    """Hand an accepted upload to the queue: its intake job."""
    queue_name, func, args, job = scan_job(upload_id, generation)
    queues.enqueue(queue_name, func, *args, job_id=job)


def evidence_dir(settings: Settings, upload_id: str):
    return settings.data_dir / "evidence" / upload_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# Per thread: sqlite connections may not cross threads, and each job thread loads its matcher (the embedder)
# once. A worker runs one job thread, so that is once per process.
_local = threading.local()


def _db(settings: Settings):
    connections = _local.__dict__.setdefault("db", {})
    key = str(settings.db_path)
    if key not in connections:
        from gate.runtime import open_record

        connections[key] = open_record(settings)
    return connections[key]


def _matcher(settings: Settings):
    matchers = _local.__dict__.setdefault("matchers", {})
    key = f"{settings.db_path}|{settings.embedder}|{settings.probe_set}"
    if key not in matchers:
        from gate.runtime import load_matcher

        matchers[key] = load_matcher(settings, _db(settings))
    else:
        matchers[key].refresh()  # characters registered since the last job count
    return matchers[key]


def _current(upload_id: str, generation: int, step: str):
    """The upload if this job is still the live one for it, else None (and why, in the log)."""
    settings = context().settings
    db = _db(settings)
    upload = get_upload(db, upload_id)
    if upload["state"] not in LIVE_STATES:
        log.info("%s: upload %s is already %s; nothing to do", step, upload_id, upload["state"])
        return None
    if (upload["generation"] or 0) != generation:
        log.info("%s: upload %s is on generation %s, not %s; nothing to do", step, upload_id,
                 upload["generation"], generation)
        return None
    return upload


def _hub_meta(upload: dict) -> dict:
    return {"title": upload["title"], "tags": json.loads(upload["tags"] or "[]"),
            "trigger_words": json.loads(upload["trigger_words"] or "[]"), "description": upload["description"],
            "hub": upload["hub"], "uploader": upload["uploader"]}


def intake_upload(upload_id: str, generation: int = 0) -> str:
    """Intake and static screening; then either a decision (refused, blocklisted) or a probe job."""
    settings, queues = context().settings, context().queues
    upload = _current(upload_id, generation, "intake")
    if upload is None:
        return "skipped"
    db = _db(settings)
    begin_scan(db, upload)
    matcher = _matcher(settings)
    result = matcher.screen(upload["file_path"], upload["filename"], _hub_meta(upload))
    if not result.inspection.ok:
        return refuse(db, upload_id, result.inspection.error)
    if result.decided_without_rendering:  # blocklisted or a near-duplicate: caught without rendering
        return _decide(settings, db, matcher, upload_id, result)
    request = {**matcher.probe_request(result, _hub_meta(upload)["trigger_words"]),
               "upload_id": upload_id, "generation": generation, "file_path": upload["file_path"],
               "file_url": _file_url(settings, upload_id)}
    queues.enqueue(PROBE, "probes.jobs.probe_upload", request, job_id=job_id(upload_id, generation, "probe"))
    return "probing"


def begin_scan(db, upload: dict, how: str = "") -> None:
    """The upload is being scanned (one more attempt)."""
    transition(db, upload["id"], UploadState.SCANNING, "worker", f"scan started{how}",
               {"attempts": (upload["attempts"] or 0) + 1})


def refuse(db, upload_id: str, error) -> str:
    """Intake refused the file: its final state, with the code, and the hub told."""
    _finish(db, upload_id, UploadState.REFUSED, "intake", "refused",
            {"error_code": error.code, "error_message": error.message}, {"code": error.code})
    return "refused"


def _file_url(settings: Settings, upload_id: str) -> str | None:
    """Where a probe worker on another machine fetches the file (it shares only Redis and the HTTP API)."""
    if settings.public_url and settings.worker_token:
        return f"{settings.public_url.rstrip('/')}/internal/uploads/{upload_id}/file"
    return None


def conclude_upload(upload_id: str, generation: int, probed: dict) -> str:
    """Match the probe worker's vectors against the registry, decide, keep the evidence, tell the hub."""
    settings = context().settings
    upload = _current(upload_id, generation, "conclude")
    if upload is None:
        return "skipped"
    db = _db(settings)
    matcher = _matcher(settings)
    result = matcher.screen(upload["file_path"], upload["filename"], _hub_meta(upload))
    if not result.inspection.ok:  # the file changed under us: never trust an earlier reading
        raise RuntimeError(f"upload {upload_id}'s file no longer passes intake: {result.inspection.error.code}")
    if probed.get("unsupported"):
        result.not_probed = probed["unsupported"]
    else:
        from probes.wire import outcome_from_json

        if probed["embedder"] != matcher.engine.embedder_id or probed["probe_set"] != matcher.engine.probe_set.id:
            raise RuntimeError(f"probe worker used {probed['probe_set']} / {probed['embedder']}, the gate "
                               f"{matcher.engine.probe_set.id} / {matcher.engine.embedder_id}: configure both alike")
        matcher.attach(result, outcome_from_json(probed))
    return _decide(settings, db, matcher, upload_id, result)


def _decide(settings: Settings, db, matcher, upload_id: str, result) -> str:
    matcher.conclude(result)
    answer = result.to_dict(matcher.characters)
    if result.decision is not None:
        from gate.evidence import write_evidence

        write_evidence(result, matcher.characters, evidence_dir(settings, upload_id))
    catalogue.record_scan(db, upload_id, result, matcher.engine.embedder_id)  # for back-catalogue screening
    _finish(db, upload_id, UploadState.DECIDED, "gate", f"decided {result.verdict}", {
        "verdict": result.verdict, "reasons": json.dumps(answer["reasons"], ensure_ascii=False),
        "matches": json.dumps(answer["matches"], ensure_ascii=False), "probe_set": result.probe_set,
        "tensor_hash": result.inspection.fingerprints.tensor_hash,
        "probe_seconds": sum(v for k, v in result.timings.items() if k in PROBE_TIMINGS) or None,
    }, {"verdict": result.verdict, "reasons": [r["kind"] for r in answer["reasons"]]})
    return str(result.verdict)


def _finish(db, upload_id: str, state: UploadState, actor: str, action: str, changes: dict, detail: dict) -> None:
    """A final state, and the message owed to the hub about it, in one transaction."""
    with writing(db):
        upload = transition(db, upload_id, state, actor, action, {**changes, "decided_at": _now()}, detail)
        outbox.enqueue(db, upload_id, f"upload.{state}", _hub_message(upload))


def _hub_message(upload: dict) -> dict:
    from gate.uploads import status

    return {key: value for key, value in status(upload).items() if key not in ("evidence_url",)}


def record_failure(upload_id: str, generation: int, step: str, message: str) -> str:
    """A job failed for good: record the upload as failed, visibly, rather than leave it waiting."""
    if _current(upload_id, generation, f"failure of {step}") is None:
        return "skipped"
    _finish(_db(context().settings), upload_id, UploadState.FAILED, "worker", f"{step} failed",
            {"error_code": "scan_failed", "error_message": f"{step}: {message}"[:500]}, {"error": message[:500]})
    return "failed"


def job_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback (every failed attempt): after the last retry, record the failure via the intake
    queue, so that a GPU worker, which never opens the record, can report it too."""
    if getattr(job, "retries_left", 0):
        return
    try:
        upload_id, generation, step = parse_job_id(job.id)
    except ValueError:
        return  # not a scan job
    message = f"{exc_type.__name__ if exc_type else 'error'}: {exc_value}"
    context().queues.enqueue(INTAKE, "gate.jobs.record_failure", upload_id, generation, step, message,
                             job_id=job_id(upload_id, generation, "failure"), retry=False)


class Dispatcher:
    """What the web gate hands accepted uploads to: the process's queues, plus their housekeeping when jobs
    run in-process (outbox delivery, picking up uploads a previous run left pending)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queues = make_queues(settings, on_idle=self.housekeeping)
        self._handoff: queue.SimpleQueue | None = None
        self._handoff_lock = threading.Lock()
        if isinstance(self.queues, InProcessQueues):
            from gate.uploads import pending

            db = open_db(settings.db_path, settings.record_sync)
            for upload_id in pending(db):  # after a restart, nothing is lost
                self.enqueue(upload_id, get_upload(db, upload_id)["generation"] or 0)
            from gate.ingest import resume_deliveries

            resume_deliveries(db, self.queues)  # Hugging Face webhooks and URL uploads

    def enqueue(self, upload_id: str, generation: int = 0) -> None:
        """Start an upload's scan; with Redis down the upload stays recorded and the reconciler starts it."""
        self.hand_off(*scan_job(upload_id, generation))

    def hand_off(self, queue_name: str, func: str, args: tuple, job: str) -> None:
        """Queue a job for something the web gate has just recorded.

        With Redis, a background thread hands jobs over in batches (one round trip each), so a hub's delivery waits
        only for its record, never for Redis; what this process dies holding is recorded as received, and the
        reconciler starts it."""
        if isinstance(self.queues, InProcessQueues):
            self.queues.enqueue(queue_name, func, *args, job_id=job)
            return
        with self._handoff_lock:
            if self._handoff is None:
                self._handoff = queue.SimpleQueue()
                threading.Thread(target=self._hand_over, name="gate-handoff", daemon=True).start()
        self._handoff.put((queue_name, func, args, job))

    def _hand_over(self) -> None:
        while True:
            batch = [self._handoff.get()]
            while len(batch) < HANDOFF_BATCH:
                try:
                    batch.append(self._handoff.get_nowait())
                except queue.Empty:
                    break
            try:
                self.queues.enqueue_many(batch)
            except Exception as exc:  # noqa: BLE001 - recorded is what matters; the reconciler retries
                log.warning("could not enqueue %d uploads (%s); the reconciler will", len(batch), exc)

    def depth(self) -> dict[str, int]:
        return self.queues.depth()

    def health(self) -> str:
        return self.queues.health()

    def housekeeping(self) -> None:
        from gate.callbacks import deliver_due

        deliver_due(self.settings, _db(self.settings))
        from gate.hub_actions import enforce_blocks

        enforce_blocks(self.settings, _db(self.settings))  # the Hugging Face adapter for blocks (off by default)


_dispatchers: dict[str, Dispatcher] = {}
_lock = threading.Lock()


def dispatcher(settings: Settings | None = None) -> Dispatcher:
    """The dispatcher for this process and record (one per database file)."""
    if settings is None:
        from gate.web.record import settings as current

        settings = current()
    key = f"{settings.db_path}|{settings.redis_url}"
    with _lock:
        if key not in _dispatchers:
            _dispatchers[key] = Dispatcher(settings)
        return _dispatchers[key]
