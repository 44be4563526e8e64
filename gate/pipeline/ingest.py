"""Fetching what a delivery names (a Hugging Face repo at a revision, a URL) as a job on the intake queue, then
recording one upload per file through the same code path as direct uploads and starting its scan.

A transient failure (the Hub or the server unreachable) is raised so the queue retries it; on the last attempt
the delivery is failed with the code. Anything else fails the delivery at once with a clear code. Each file
is fetched once per (repo, revision, path): a redelivery or a retry reuses the upload already made.
"""

from __future__ import annotations

import json
import logging
import posixpath
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from gate.config import Settings
from gate.hubs.deliveries import (
    LIVE_STATES,
    DeliveryState,
    fail_delivery,
    get_delivery,
    update_delivery,
)
from gate.hubs.fetch import FetchError, fetch_to_file
from gate.pipeline.start import fetch_job_id, start_fetch, start_scan
from gate.queues import RETRY_INTERVALS, Queues, context
from gate.record.db import writing
from gate.record.uploads import record_upload, store_file
from gate.runtime import thread_record

log = logging.getLogger(__name__)
MAX_GENERATIONS = 5


def _limit(settings: Settings) -> int:
    return min(settings.fetch.max_bytes, settings.intake.max_file_bytes)


def fetch_delivery(delivery_id: str, generation: int = 0) -> str:
    """The job: fetch a delivery's files, record an upload for each, start their scans."""
    settings, queues = context().settings, context().queues
    db = thread_record(settings)
    delivery = get_delivery(db, delivery_id)
    if delivery["state"] not in LIVE_STATES or (delivery["generation"] or 0) != generation:
        log.info("fetch: delivery %s is %s (generation %s, job %s); nothing to do", delivery_id, delivery["state"],
                 delivery["generation"], generation)
        return "skipped"
    attempts = (delivery["attempts"] or 0) + 1
    update_delivery(db, delivery_id, DeliveryState.FETCHING, attempts=attempts)
    upload_ids: list[str] = json.loads(delivery["upload_ids"] or "[]")
    try:
        if delivery["kind"] == "url":
            _fetch_url(settings, db, queues, delivery, upload_ids)
        else:
            _fetch_huggingface(settings, db, queues, delivery, upload_ids)
    except FetchError as exc:
        if exc.transient and attempts <= len(RETRY_INTERVALS):
            update_delivery(db, delivery_id, DeliveryState.RECEIVED, upload_ids=upload_ids, error_code=exc.code,
                            error_message=exc.message[:500])
            raise  # the queue retries it
        fail_delivery(db, delivery_id, exc, upload_ids)
        if exc.transient:
            raise  # out of retries: shown in the queue's failed registry too
        return exc.code
    reason = None if upload_ids else "no new or changed weight files at this revision"
    update_delivery(db, delivery_id, DeliveryState.FETCHED, upload_ids=upload_ids, reason=reason, error_code=None,
                    error_message=None)
    return "fetched"


def _accept(settings: Settings, db, queues: Queues, source: str, meta: dict, fetched, filename: str, key: str,
            upload_ids: list[str], previews: list[dict] = ()) -> None:
    """The same path as a direct upload: the content-addressed store, the record, the scan."""
    stored = store_file(fetched.path, settings.data_dir / "uploads", fetched.sha256)
    recorded = record_upload(db, source, meta, stored, fetched.sha256, fetched.size, filename, extra_key=key,
                             previews=previews)
    if recorded.upload["id"] not in upload_ids:
        upload_ids.append(recorded.upload["id"])
    if recorded.created:
        start_scan(queues, recorded.upload["id"])


def _fetch_huggingface(settings: Settings, db, queues: Queues, delivery: dict, upload_ids: list[str]) -> None:
    from gate.hubs import huggingface as hf

    repo_id, revision = delivery["repo_id"], delivery["revision"]
    previous = json.loads(delivery["meta"] or "{}").get("previous")
    files = hf.changed_files(settings, repo_id, revision, previous)
    if len(files) > settings.huggingface.max_files:
        raise FetchError(f"{repo_id}@{revision[:12]} has {len(files)} new weight files; the limit is "
                         f"{settings.huggingface.max_files} (GATE_HUGGINGFACE_MAX_FILES)", "too_many_files")
    limit = _limit(settings)
    for file in files:  # checked before anything is downloaded
        if file.size > limit:
            raise FetchError(f"{file.path} is {file.size} bytes; the limit is {limit}", "fetch_too_large")
    meta = hf.card_meta(settings, repo_id, revision) if files else {}
    previews = _repo_previews(settings, repo_id, revision) if files else []
    for file in files:
        existing = list(db["uploads"].rows_where("hub = ? and model_id = ? and version_id = ? and filename = ?",
                                                 [hf.HUB, repo_id, revision, file.path], limit=1))
        if existing:  # fetched before (a retry, or another hook for the same push)
            if existing[0]["id"] not in upload_ids:
                upload_ids.append(existing[0]["id"])
            continue
        url, headers = hf.file_url(settings, repo_id, revision, file.path)
        fetched = fetch_to_file(url, settings.data_dir / "incoming", settings.fetch, limit, headers)
        _accept(settings, db, queues, "huggingface", meta, fetched, file.path, file.path, upload_ids, previews)


def _repo_previews(settings: Settings, repo_id: str, revision: str) -> list[dict]:
    """The repo's images, as the previews of each upload it makes (gate.images.previews), as a direct upload's
    `preview` parts are. An image that cannot be fetched is left out; the weights are what must arrive."""
    from gate.hubs import huggingface as hf
    from gate.hubs.spool import MAX_PREVIEWS, PREVIEW_BYTES
    from gate.images.previews import store_previews

    images = []
    for file in hf.image_files(settings, repo_id, revision, MAX_PREVIEWS, PREVIEW_BYTES):
        url, headers = hf.file_url(settings, repo_id, revision, file.path)
        try:
            fetched = fetch_to_file(url, settings.data_dir / "incoming", settings.fetch, PREVIEW_BYTES, headers)
        except FetchError as exc:
            log.warning("%s@%s: preview %s not fetched (%s)", repo_id, revision[:12], file.path, exc.code)
            continue
        try:
            images.append((file.path, fetched.path.read_bytes()))
        finally:
            fetched.path.unlink(missing_ok=True)
    return store_previews(images, settings.data_dir / "previews")


def _fetch_url(settings: Settings, db, queues: Queues, delivery: dict, upload_ids: list[str]) -> None:
    if upload_ids:
        return  # fetched on an earlier attempt
    meta = json.loads(delivery["meta"] or "{}")
    url = delivery["url"]
    fetched = fetch_to_file(url, settings.data_dir / "incoming", settings.fetch, _limit(settings),
                            public_only=not settings.fetch.allow_private_addresses,
                            allowed_hosts=settings.fetch.allowed_hosts)
    filename = posixpath.basename(unquote(urlsplit(url).path)) or "upload.safetensors"
    _accept(settings, db, queues, "url", meta, fetched, filename, url, upload_ids)


# ---------------------------------------------------------------------------------------------------------
# After a crash or a Redis outage: deliveries recorded but with no live fetch job are started again.

def reconcile_deliveries(db, queues, grace_seconds: float = 10) -> list[str]:
    """Restart the fetch of every live delivery whose job was lost (Redis down when it arrived, a worker killed)."""
    from gate.pipeline.reconcile import WAITING, worker_alive

    cutoff = (datetime.now(UTC) - timedelta(seconds=grace_seconds)).isoformat(timespec="milliseconds")
    alive = worker_alive(queues)
    touched = []
    for delivery in db["deliveries"].rows_where("state in (?, ?) and updated_at < ?", [*LIVE_STATES, cutoff]):
        delivery_id, generation = delivery["id"], delivery["generation"] or 0
        status, worker = queues.job_status(fetch_job_id(delivery_id, generation))
        status = str(status.value if hasattr(status, "value") else status) if status else None
        if status in WAITING or (status == "started" and alive(worker)):
            continue
        touched.append(delivery_id)
        if generation + 1 >= MAX_GENERATIONS:
            fail_delivery(db, delivery_id, FetchError(f"no fetch finished in {MAX_GENERATIONS} tries", "fetch_lost"))
            continue
        with writing(db):
            update_delivery(db, delivery_id, DeliveryState.RECEIVED, generation=generation + 1, attempts=0)
        start_fetch(queues, delivery_id, generation + 1)
        log.warning("delivery %s had no live fetch job (generation %d); restarted", delivery_id, generation)
    return touched


def resume_deliveries(db, queues: Queues) -> None:
    """In-process queues after a restart: every live delivery is fetched again (its jobs died with the process)."""
    for delivery in db["deliveries"].rows_where("state in (?, ?)", list(LIVE_STATES), order_by="created_at"):
        start_fetch(queues, delivery["id"], delivery["generation"] or 0)
