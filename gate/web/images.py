"""Images a hub sends to be screened: generated images (POST /v1/images) and training sets before a LoRA is
trained on them (POST /v1/datasets). Signed like uploads; the `file` part is one image or a zip of images
(captions in a captions.jsonl or a .txt beside each image), or `image` parts are a list of images, packed
into one stored zip; the `meta` part is the hub's record. The set is
recorded durably and screened on the queue (gate.images.jobs); a small set's verdict comes back in the answer
(200) when it is ready within GATE_IMAGES_WAIT_SECONDS, else 202 with the status URL. The same set sent again
is the first one (idempotent)."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile

from flask import Blueprint, jsonify, request, send_from_directory, url_for

from gate.errors import GateError
from gate.hubs.fetch import check_url
from gate.hubs.spool import BadDelivery
from gate.images.bundle import pack
from gate.images.jobs import evidence_dir, set_job
from gate.images.record import LIVE, get_set, record_set, set_status
from gate.pipeline.dispatch import dispatcher
from gate.queues import INTAKE
from gate.record.uploads import parse_meta, store_file
from gate.web.context import db, settings
from gate.web.deliveries import UrlUploadInvalid, signed_json
from gate.web.limits import takes_body
from gate.web.uploads import ENVELOPE, signed_delivery

bp = Blueprint("images", __name__)


MAX_URLS = 1000  # image URLs in one JSON list
MAX_URL_BODY = 1024 * 1024
MAX_IMAGE_PARTS = 1001  # a list of up to 1,000 `image` parts and the `meta` part; more go in a zip


def _limit(config) -> int:
    return config.intake.max_file_bytes + ENVELOPE


@bp.post("/v1/images")
@takes_body(_limit)
def generated_images():
    """Generated images (a gallery, a recommendation page's images): one image or a zip, with the model or
    LoRA that made them in meta.model_id."""
    return _receive("images")


@bp.post("/v1/datasets")
@takes_body(_limit)
def training_set():
    """A training set before the hub trains on it: a zip of images with their captions."""
    return _receive("dataset")


def _receive(kind: str):
    config = settings()
    if not config.upload_secret:
        raise GateError("GATE_UPLOAD_SECRET is not set: this gate cannot authenticate deliveries", "not_configured")
    if request.mimetype == "application/json":
        row, created = _url_list(config, kind)
    else:
        row, created = _multipart_set(config, kind)
    if created:
        dispatcher(config).hand_off(INTAKE, "gate.images.jobs.screen_set", (row["id"],), set_job(row["id"], "screen"))
    deadline = time.monotonic() + config.images_wait_seconds
    while row["state"] in LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
        row = get_set(db(), row["id"])
    answer = {**_answer(row), "duplicate": not created}
    return jsonify(answer), 202 if row["state"] in LIVE else 200


def _url_list(config, kind: str) -> tuple[dict, bool]:
    """`{"urls": [...], "meta": {...}}`, signed over the body: each URL checked now (refused whole, with its
    code, before a 202), fetched on the queue under the URL-upload rules."""
    _, body = signed_json(config.upload_secret, MAX_URL_BODY, "a list of image URLs")
    urls = body.get("urls")
    if not isinstance(urls, list) or not 1 <= len(urls) <= MAX_URLS:
        raise UrlUploadInvalid(f"'urls' must be a list of 1 to {MAX_URLS} image URLs", "urls_invalid")
    urls = [check_url(url, config.fetch.allowed_hosts) for url in urls]
    meta = parse_meta(body.get("meta"))
    digest = hashlib.sha256(json.dumps(urls).encode()).hexdigest()
    return record_set(db(), kind, meta, None, digest, 0, f"{len(urls)} URLs", urls=urls)


def _multipart_set(config, kind: str) -> tuple[dict, bool]:
    spooled, meta = signed_delivery(config, _limit(config), "an image or a zip of images", MAX_IMAGE_PARTS)
    if spooled.images:
        if spooled.weights is not None:
            spooled.discard()
            raise BadDelivery("send a 'file' part or 'image' parts, not both", "multipart_invalid")
        try:
            spooled.weights, spooled.sha256, spooled.size = pack(spooled.images, config.data_dir / "incoming")
        finally:
            for _, path in spooled.images:
                path.unlink(missing_ok=True)
        spooled.images, spooled.filename = [], spooled.filename or f"{len(spooled.images)} images"
    # Content-addressed, as uploads are; the suffix says how to read it (an archive, or one image).
    target = store_file(spooled.weights, config.data_dir / "image-sets", spooled.sha256,
                        ".zip" if zipfile.is_zipfile(spooled.weights) else ".image")
    return record_set(db(), kind, meta, target, spooled.sha256, spooled.size, spooled.filename or f"{kind}.bin")


def _answer(row: dict) -> dict:
    answer = {**set_status(db(), row), "status_url": url_for("images.set_status_view", set_id=row["id"],
                                                             _external=True)}
    if (evidence_dir(settings(), row["id"]) / "index.html").exists():
        answer["evidence_url"] = url_for("images.set_evidence", set_id=row["id"], name="index.html", _external=True)
    return answer


@bp.get("/v1/images/<set_id>")
@bp.get("/v1/datasets/<set_id>")
def set_status_view(set_id: str):
    """A set's state (received / screening / decided / refused), verdict, reasons and matching images."""
    return jsonify(_answer(get_set(db(), set_id)))


@bp.get("/v1/images/<set_id>/evidence/<name>")
def set_evidence(set_id: str, name: str):
    """The set's evidence page and its images: each matching image beside its closest reference."""
    get_set(db(), set_id)
    return send_from_directory(evidence_dir(settings(), set_id), name)
