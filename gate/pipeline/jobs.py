"""The scan of an accepted upload as three queue jobs: intake (CPU) → probe (GPU, probes.jobs) → conclude (CPU).

Jobs take upload ids and plain JSON, never objects; they re-read what they need from the record, log why
they did nothing when they do nothing, and raise on failure so the queue retries them (then `job_failed`
records the upload as failed). Each pipeline run has a generation: the reconciler starts a new one when a
run was lost (a worker killed, Redis restarted), and a job of an older generation does nothing.
The GPU side (probes.jobs.probe_upload) never opens the record: it gets a request and hands back JSON.
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import UTC, datetime

import numpy as np

from gate.config import Settings
from gate.detection.scanner import Scanner, probe_spec
from gate.images.previews import matched_previews, preview_reasons, preview_request, previews_of
from gate.images.record import keep_vectors
from gate.images.screen import ImageCalibrationMissing, image_ids, image_references, load_image_thresholds
from gate.pipeline.outcome import begin_scan, fail, record_decision, refuse
from gate.queues import CATALOGUE, CATALOGUE_PROBE, INTAKE, PROBE, context, job_id, parse_job_id
from gate.record.db import writing
from gate.record.uploads import Stage, UploadState, enter_stage, get_upload, hub_meta
from gate.registry.characters import missing_references, store_vectors
from gate.runtime import thread_record
from probes.contract import outcome_from_json

log = logging.getLogger(__name__)
LIVE_STATES = (UploadState.RECEIVED, UploadState.SCANNING)
# (probe queue, conclude queue) of a scan: a live upload's, and a back-catalogue import's (behind live ones)
LIVE, CATALOGUE_LANE = (PROBE, INTAKE), (CATALOGUE_PROBE, CATALOGUE)


# Per thread: each job thread makes its matcher once (a worker runs one job thread, so once per process).
_local = threading.local()


class ReferencesPending(RuntimeError):
    """References registered after the probe request have no vectors yet: retried once a probe worker has
    embedded them (a decision never rests on part of the registry)."""


def job_matcher(settings: Settings) -> Scanner:
    """This job thread's matcher: it screens, matches and decides, and renders and embeds nothing (no torch);
    the registry re-read on every call."""
    matchers = _local.__dict__.setdefault("matchers", {})
    key = f"{settings.db_path}|{settings.embedder}|{settings.probe_set}"
    if key not in matchers:
        matchers[key] = Scanner(settings, thread_record(settings), probe_spec(settings))
    else:
        matchers[key].refresh()  # characters registered since the last job count
    return matchers[key]


def live_upload(upload_id: str, generation: int, step: str) -> dict | None:
    """The upload if this job is still the live one for it, else None (and why, in the log)."""
    upload = get_upload(thread_record(context().settings), upload_id)
    if upload["state"] not in LIVE_STATES:
        log.info("%s: upload %s is already %s; nothing to do", step, upload_id, upload["state"])
        return None
    if (upload["generation"] or 0) != generation:
        log.info("%s: upload %s is on generation %s, not %s; nothing to do", step, upload_id,
                 upload["generation"], generation)
        return None
    return upload


def intake_upload(upload_id: str, generation: int = 0) -> str:
    """Intake and static screening; then either a decision (refused, blocklisted) or a probe job."""
    upload = live_upload(upload_id, generation, "intake")
    if upload is None:
        return "skipped"
    begin_scan(thread_record(context().settings), upload)
    return request_probe(upload, generation, LIVE)


def request_probe(upload: dict, generation: int, lane: tuple[str, str]) -> str:
    """Screen an upload being scanned (intake, names, blocklist, repeats) and decide it when that settles it;
    else hand a probe worker the request on the lane's probe queue, `conclude_upload` as its reply."""
    probe_queue, conclude_queue = lane
    settings, queues = context().settings, context().queues
    upload_id, db = upload["id"], thread_record(settings)
    matcher = job_matcher(settings)
    result = matcher.screen(upload["file_path"], upload["filename"], hub_meta(upload))
    if not result.inspection.ok:
        return refuse(db, upload_id, result.inspection.error)
    if result.decided_without_rendering:  # blocklisted or a near-duplicate: caught without rendering
        return record_decision(settings, db, matcher, upload_id, result)
    request = upload_request(settings, upload, matcher.probe_request(result, hub_meta(upload)["trigger_words"]),
                             reply_to(conclude_queue, "gate.pipeline.jobs.conclude_upload", [upload_id, generation],
                                      job_id(upload_id, generation, "conclude")))
    ids = image_ids(settings)
    request["previews"] = preview_request(db, upload_id, ids.vectors)
    if previews_of(db, upload_id):  # judged against every reference as the image embedder sees it
        request["image_references"] = missing_references(db, ids.references)
    with writing(db):  # the answer must come back for this version (conclude_upload checks it)
        db["uploads"].update(upload_id, {"registry_version": request["registry"]})
    # The stage before the job: a fast probe's conclusion must not be overtaken by it.
    enter_stage(db, upload_id, Stage.PROBING if lane == LIVE else Stage.PROBING_CATALOGUE, {"queue": probe_queue})
    queues.enqueue(probe_queue, "probes.jobs.probe_upload", request, job_id=job_id(upload_id, generation, "probe"))
    return "probing"


def reply_to(queue: str, func: str, args: list, job: str) -> dict:
    """The gate job a probe worker hands its result to: `func(*args, result)` on `queue`, as job `job`."""
    return {"queue": queue, "func": func, "args": args, "job_id": job}


def upload_request(settings: Settings, upload: dict, request: dict, reply: dict) -> dict:
    """A probe request for one upload's file: where the worker finds it (the shared disk, else the gate's HTTP
    API), and the job it replies to."""
    return {**request, "upload_id": upload["id"], "generation": upload["generation"] or 0,
            "file_path": upload["file_path"], "file_url": file_url(settings, upload["id"]), "reply": reply}


def file_url(settings: Settings, upload_id: str) -> str | None:
    """Where a probe worker on another machine fetches the file (it shares only Redis and the HTTP API)."""
    if settings.public_url and settings.worker_token:
        return f"{settings.public_url.rstrip('/')}/internal/uploads/{upload_id}/file"
    return None


def conclude_upload(upload_id: str, generation: int, probed: dict) -> str:
    """Match the probe worker's vectors against the registry, decide, keep the evidence, tell the hub."""
    settings = context().settings
    upload = live_upload(upload_id, generation, "conclude")
    if upload is None:
        return "skipped"
    db = thread_record(settings)
    if upload["stage"] != Stage.CONCLUDING:  # not again when a retry (references pending) comes back here
        probe_answered(db, upload, probed)
    matcher = conclusion_matcher(settings, probed, job_id(upload_id, generation, "references"))
    result = matcher.screen(upload["file_path"], upload["filename"], hub_meta(upload))
    if not result.inspection.ok:  # the file changed under us: never trust an earlier reading
        raise RuntimeError(f"upload {upload_id}'s file no longer passes intake: {result.inspection.error.code}")
    answered = (probed.get("scope") or {}).get("registry")
    if not probed.get("unsupported") and answered != upload["registry_version"]:
        raise RuntimeError(f"upload {upload_id}: the probe answered for registry {answered}, the gate asked for "
                           f"{upload['registry_version']}")
    attach_probed(matcher, result, probed)
    attach_previews(settings, db, matcher, result, upload_id, probed)
    return record_decision(settings, db, matcher, upload_id, result)


def attach_previews(settings: Settings, db, matcher: Scanner, result, upload_id: str, probed: dict) -> None:
    """Keep the previews' vectors the probe worker computed, and judge the previews into the result."""
    ids = image_ids(settings)
    if probed.get("preview_vectors"):
        if probed.get("image_embedder") != ids.vectors:
            raise RuntimeError(f"probe worker embedded previews as {probed.get('image_embedder')}, the gate as "
                               f"{ids.vectors}")
        keep_vectors(db, ids.vectors, {digest: np.frombuffer(base64.b64decode(text), np.float32)
                                       for digest, text in probed["preview_vectors"].items()})
    if probed.get("image_reference_vectors"):
        store_vectors(db, ids.references, probed["image_reference_vectors"])
    if not previews_of(db, upload_id):
        return
    try:
        thresholds = load_image_thresholds(settings.calibration_file, ids.vectors)
    except ImageCalibrationMissing as exc:
        log.warning("upload %s: its previews are not judged (%s)", upload_id, exc.message)
        return
    references = image_references(db, ids.references)
    result.preview_reasons = preview_reasons(db, upload_id, ids.vectors, references, thresholds, matcher.policies())
    seen = matched_previews(result.preview_reasons, references)
    result.previews = [{"name": row["name"], "path": row["path"], "shows": None,
                        **seen.get(row["name"], {})} for row in previews_of(db, upload_id)]


def probe_answered(db, upload: dict, probed: dict) -> None:
    """The probe worker's answer is in: the scan is concluding, and how long the probe waited and worked is kept
    for the status API's estimates."""
    since = upload["stage_at"] or upload["updated_at"]
    elapsed = max(0.0, (datetime.now(UTC) - datetime.fromisoformat(since)).total_seconds())
    work = min(float(probed.get("seconds") or elapsed), elapsed)
    timing = {"waited": round(elapsed - work, 3), "work": round(work, 3)}
    enter_stage(db, upload["id"], Stage.CONCLUDING, timing)
    with writing(db):
        db["probe_times"].insert({"upload_id": upload["id"], "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                                  "lane": upload["stage"], **timing})


def attach_probed(matcher: Scanner, result, probed: dict) -> None:
    """Add a probe worker's answer to a screened result: its renders and vectors, or why it could not probe."""
    if probed.get("unsupported"):
        result.not_probed = probed["unsupported"]
    else:
        matcher.attach(result, outcome_from_json(probed))


def conclusion_matcher(settings: Settings, probed: dict, references_job: str, probe_queue: str = PROBE) -> Scanner:
    """The matcher for a probe worker's answer: its configuration checked against the gate's, the reference
    vectors it computed kept, and every active reference embedded (else the job waits for them)."""
    matcher = job_matcher(settings)
    embedder, probe_set = probed.get("embedder"), probed.get("probe_set")
    if embedder != matcher.engine.embedder_id or (probe_set and probe_set != matcher.engine.probe_set.id):
        raise RuntimeError(f"probe worker used {probe_set} / {embedder}, the gate {matcher.engine.probe_set.id} / "
                           f"{matcher.engine.embedder_id}: configure both alike")
    if probed.get("reference_vectors"):
        store_vectors(thread_record(settings), embedder, probed["reference_vectors"])
        matcher.refresh()
    pending = missing_references(thread_record(settings), embedder)
    if pending:  # registered after the probe request went out
        queue_embedding(pending, references_job, reply_to(INTAKE, "gate.pipeline.jobs.references_embedded", [],
                                                          f"{references_job}-kept"), probe_queue)
        raise ReferencesPending(f"{len(pending)} references have no vectors yet; a probe worker is embedding them")
    return matcher


def queue_embedding(references: list[dict], job: str, reply: dict, queue: str = PROBE) -> None:
    """Ask a probe worker to embed references (id, path, sha256); `reply` keeps the vectors (and may go on)."""
    context().queues.enqueue(queue, "probes.jobs.embed_references", {"references": references, "reply": reply},
                             job_id=job)


def references_embedded(embedded: dict) -> str:
    """A probe worker's reference vectors (`probes.jobs.embed_references`), kept in the registry."""
    kept = store_vectors(thread_record(context().settings), embedded["embedder"], embedded["vectors"])
    return f"{kept} reference vectors kept"


def record_failure(upload_id: str, generation: int, step: str, message: str, code: str = "scan_failed") -> str:
    """A job failed for good: record the upload as failed, visibly, rather than leave it waiting."""
    if live_upload(upload_id, generation, f"failure of {step}") is None:
        return "skipped"
    return fail(thread_record(context().settings), upload_id, "worker", f"{step} failed", f"{step}: {message}",
                {"error": message[:500]}, code)


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
    code = getattr(exc_type, "failure_code", None)  # a typed failure keeps its code (a probe worker's refused request)
    context().queues.enqueue(INTAKE, "gate.pipeline.jobs.record_failure", upload_id, generation, step, message,
                             code if isinstance(code, str) else "scan_failed",
                             job_id=job_id(upload_id, generation, "failure"), retry=False)
