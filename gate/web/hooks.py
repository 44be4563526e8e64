"""Hub deliveries. Each is authenticated, written to disk and recorded durably, then answered 202 at once;
the scan happens on the queue."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from flask import Blueprint, jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.formparser import parse_form_data

from gate import signatures
from gate.errors import GateError
from gate.uploads import parse_meta, record_upload, store_file
from gate.web.record import db, settings

bp = Blueprint("hooks", __name__)
CHUNK = 1024 * 1024


class BadDelivery(GateError):
    code = "delivery_invalid"


def _spool_body(limit: int, mac) -> tuple[Path, int]:
    """Stream the raw body to disk, feeding the signature check as it goes; never held in memory whole."""
    spool_dir = settings().data_dir / "incoming"
    spool_dir.mkdir(parents=True, exist_ok=True)
    size = 0
    with tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".body") as spool:
        try:
            while chunk := request.stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise RequestEntityTooLarge(f"the body is over {limit} bytes")
                mac.update(chunk)
                spool.write(chunk)
        except BaseException:
            Path(spool.name).unlink(missing_ok=True)
            raise
    return Path(spool.name), size


def _copy_weights(part, spool_dir: Path) -> tuple[Path, str, int]:
    digest, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".weights") as target:
        while chunk := part.stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            target.write(chunk)
    return Path(target.name), digest.hexdigest(), size


@bp.post("/v1/uploads")
def direct_upload():
    """A hub pushes a LoRA: multipart with a `file` part and an optional `meta` JSON part, signed (or a JSON
    body naming a URL: gate.web.deliveries)."""
    config = settings()
    if not config.upload_secret:
        raise GateError("GATE_UPLOAD_SECRET is not set: this gate cannot authenticate uploads", "not_configured")
    if request.mimetype == "application/json":  # a URL upload: the weights are fetched on the queue
        from gate.web.deliveries import url_upload

        return url_upload(config.upload_secret)
    if not request.mimetype == "multipart/form-data":
        raise UnsupportedMediaType("send multipart/form-data with a 'file' part (and an optional 'meta' part)")
    timestamp, candidates = signatures.parse_header(request.headers.get("X-Gate-Signature"))
    signatures.check_timestamp(timestamp)
    mac = signatures.signer(config.upload_secret, timestamp)
    body, size = _spool_body(config.intake.max_file_bytes + 4 * CHUNK, mac)
    weights = None
    try:
        signatures.check_mac(mac.hexdigest(), candidates)
        with open(body, "rb") as stream:
            environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": request.content_type, "CONTENT_LENGTH": str(size),
                       "wsgi.input": stream}
            _, form, files = parse_form_data(environ, max_form_memory_size=1024 * 1024, silent=False)
            part = files.get("file")
            if part is None:
                raise BadDelivery("the multipart body has no 'file' part", "file_missing")
            raw_meta = form.get("meta")
            if raw_meta is None and "meta" in files:  # some clients send meta as a file part
                raw_meta = files["meta"].stream.read(1024 * 1024)
            try:
                meta = parse_meta(json.loads(raw_meta) if raw_meta else None)
            except ValueError:
                raise BadDelivery("the 'meta' part is not valid JSON", "meta_invalid") from None
            weights, sha256, weights_size = _copy_weights(part, body.parent)
            filename = part.filename or "upload.safetensors"
    finally:
        body.unlink(missing_ok=True)
    stored = store_file(weights, config.data_dir / "uploads", sha256)
    recorded = record_upload(db(), "direct", meta, stored, sha256, weights_size, filename)
    if recorded.created:
        from gate.jobs import dispatcher

        dispatcher().enqueue(recorded.upload["id"])
    upload_id = recorded.upload["id"]
    return jsonify(id=upload_id, status_url=url_for("api.upload_status", upload_id=upload_id, _external=True),
                   duplicate=not recorded.created), 202
