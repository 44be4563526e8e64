"""An image set's screening as queue jobs: `screen_set` (the record's side: read and validate the set, reuse
the vectors the record holds) → `probes.jobs.embed_images` (a probe worker embeds the images it has not seen)
→ `conclude_set` (the record's side: judge, record, evidence, tell the hub). Job ids are `<set id>_<step>`,
so the upload pipeline's failure callback leaves them alone."""

from __future__ import annotations

import base64
import json
import posixpath
import zipfile
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import numpy as np

from gate.hubs.fetch import FetchError, fetch_to_file
from gate.images.bundle import BundleError, pack, read_bundle
from gate.images.evidence import write_image_evidence
from gate.images.record import LIVE, get_set, keep_vectors, known_vectors, set_status, update_set
from gate.images.screen import image_ids, judge_bundle, load_image_thresholds
from gate.pipeline.jobs import reply_to
from gate.queues import INTAKE, PROBE, context
from gate.record import outbox
from gate.record.db import writing
from gate.record.uploads import store_file
from gate.registry.characters import missing_references, store_vectors
from gate.registry.images import MAX_BYTES
from gate.runtime import thread_record


def set_job(set_id: str, step: str) -> str:
    return f"{set_id}_{step}"


def evidence_dir(settings, set_id: str):
    return settings.data_dir / "evidence" / set_id


def screen_set(set_id: str) -> str:
    """Validate a recorded set and embed what the record has no vector for (on a probe worker), or conclude."""
    settings, queues = context().settings, context().queues
    db = thread_record(settings)
    row = get_set(db, set_id)
    if row["state"] not in LIVE:
        return "skipped"
    row = update_set(db, set_id, {"state": "screening", "attempts": (row["attempts"] or 0) + 1})
    if row["urls"] and not row["file_path"]:
        row = fetch_set(settings, db, row)
    try:
        bundle = read_bundle([row["file_path"]])
    except BundleError as exc:
        _finish(db, set_id, {"state": "refused", "error_code": exc.code, "error_message": exc.message})
        return "refused"
    ids = image_ids(settings)
    known = known_vectors(db, ids.vectors, [item.image.sha256 for item in bundle.items])
    missing = {item.image.sha256: item.name for item in bundle.items if item.image.sha256 not in known}
    references = missing_references(db, ids.references)  # without the image embedder's vectors: embedded too
    if not missing and not references:  # every image seen before: no worker needed
        return conclude_set(set_id, {"embedder": ids.vectors, "vectors": {}})
    request = {"set_id": set_id, "path": row["file_path"], "archive": zipfile.is_zipfile(row["file_path"]),
               "images": [{"name": name, "sha256": digest} for digest, name in missing.items()],
               "embed": references,
               "reply": reply_to(INTAKE, "gate.images.jobs.conclude_set", [set_id], set_job(set_id, "conclude"))}
    queues.enqueue(PROBE, "probes.jobs.embed_images", request, job_id=set_job(set_id, "embed"))
    return "embedding"


def fetch_set(settings, db, row: dict) -> dict:
    """Fetch a set named by URLs under the URL-upload rules (allowed hosts, public addresses, size and time
    limits), pack what arrived into one stored zip, and keep each URL that failed with its code."""
    urls, fetched, refused = json.loads(row["urls"]), [], []
    spool = settings.data_dir / "incoming"
    try:
        for n, url in enumerate(urls):
            try:
                got = fetch_to_file(url, spool, settings.fetch, MAX_BYTES, public_only=not
                                    settings.fetch.allow_private_addresses, allowed_hosts=settings.fetch.allowed_hosts)
            except FetchError as exc:
                refused.append({"name": url, "code": exc.code, "message": exc.message})
                continue
            name = posixpath.basename(unquote(urlsplit(url).path)) or f"image_{n}"
            fetched.append((f"{n:04d}_{name}", got.path))
        packed, digest, size = pack(fetched, spool)
    finally:
        for _, path in fetched:
            path.unlink(missing_ok=True)
    target = store_file(packed, settings.data_dir / "image-sets", digest, ".zip")
    return update_set(db, row["id"], {"file_path": str(target), "file_size": size,
                                      "refused": json.dumps(refused, ensure_ascii=False)})


def conclude_set(set_id: str, embedded: dict) -> str:
    """Keep a probe worker's vectors, judge the set, record it with its evidence, and owe the hub a message."""
    settings = context().settings
    db = thread_record(settings)
    row = get_set(db, set_id)
    if row["state"] not in LIVE:
        return "skipped"
    ids = image_ids(settings)
    if embedded.get("embedder") != ids.vectors:
        raise RuntimeError(f"probe worker embedded images as {embedded.get('embedder')}, the gate as {ids.vectors}")
    fresh = {digest: np.frombuffer(base64.b64decode(text), np.float32)
             for digest, text in (embedded.get("vectors") or {}).items()}
    keep_vectors(db, ids.vectors, fresh)
    if embedded.get("reference_vectors"):
        store_vectors(db, ids.references, embedded["reference_vectors"])
    bundle = read_bundle([row["file_path"]])
    vectors = known_vectors(db, ids.vectors, [item.image.sha256 for item in bundle.items])
    unreadable = [item for item in bundle.items if item.image.sha256 not in vectors]
    for item in unreadable:  # the worker could not decode it: refused alone, as intake would
        bundle.refused.append({"name": item.name, "code": "image_corrupt", "message": "the probe worker could not "
                               "decode it"})
    bundle.items = [item for item in bundle.items if item.image.sha256 in vectors]
    thresholds = load_image_thresholds(settings.calibration_file, ids.vectors)
    matrix = (np.stack([vectors[item.image.sha256] for item in bundle.items]) if bundle.items
              else np.zeros((0, 1), np.float32))
    screened = judge_bundle(bundle, matrix, db, ids.references, thresholds)
    title = row["title"] or row["filename"] or set_id
    write_image_evidence(screened, evidence_dir(settings, set_id), title)
    answer = screened.to_dict()
    with writing(db):
        db["set_images"].delete_where("set_id = ?", [set_id])
        db["set_images"].insert_all([
            {"set_id": set_id, "position": n, "name": image["name"], "sha256": image["sha256"],
             "character_id": match.get("character"), "score": match.get("score"),
             "strong": int(match.get("strong", False)), "reference": match.get("reference"),
             "region": json.dumps(match["region"]) if match.get("region") else None,
             "reference_region": json.dumps(match["reference_region"]) if match.get("reference_region") else None}
            for n, image in enumerate(answer["images"]) for match in [image["matched"] or {}]])
    _finish(db, set_id, {"state": "decided", "verdict": answer["verdict"],
                         "review_status": "quarantined" if answer["verdict"] == "quarantine" else None,
                         "reasons": json.dumps(answer["reasons"], ensure_ascii=False),
                         "images": answer["counts"]["images"], "matched": answer["counts"]["matched"],
                         "embedded": len(fresh),
                         "refused": json.dumps(json.loads(row["refused"] or "[]") + bundle.refused,
                                               ensure_ascii=False)})
    return answer["verdict"]


STEPS = ("screen", "embed", "conclude")
MAX_ATTEMPTS = 5


def live_sets(db, older_than: str | None = None) -> list[dict]:
    where, params = "state in ('received', 'screening')", []
    if older_than:
        where += " and coalesce(updated_at, created_at) < ?"
        params.append(older_than)
    return list(db["image_sets"].rows_where(where, params, order_by="created_at"))


def restart_set(db, queues, row: dict) -> None:
    """Start a set's screening again (its vectors so far are kept), or fail it after MAX_ATTEMPTS."""
    if (row["attempts"] or 0) >= MAX_ATTEMPTS:
        _finish(db, row["id"], {"state": "failed", "error_code": "scan_failed",
                                "error_message": f"no screening finished in {MAX_ATTEMPTS} tries"})
        return
    update_set(db, row["id"], {"state": "received"})
    queues.enqueue(INTAKE, "gate.images.jobs.screen_set", row["id"], job_id=set_job(row["id"], "screen"))


def _finish(db, set_id: str, changes: dict) -> None:
    """A final state, and the hub's message about it, in one transaction."""
    with writing(db):
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        db["image_sets"].update(set_id, {**changes, "decided_at": now, "updated_at": now})
        row = get_set(db, set_id)
        outbox.enqueue(db, set_id, f"images.{row['state']}", set_status(db, row))
