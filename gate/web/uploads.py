"""Hub deliveries. Each is authenticated, written to disk and recorded durably, then answered 202 at once;
the scan happens on the queue."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for
from werkzeug.exceptions import UnsupportedMediaType

from gate import jsontext
from gate.errors import GateError
from gate.hubs import signatures
from gate.hubs.spool import CHUNK, BadDelivery, spool_multipart
from gate.pipeline.dispatch import dispatcher
from gate.record.uploads import parse_meta, record_upload, store_file
from gate.web.context import db, settings

bp = Blueprint("hooks", __name__)


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
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        raise BadDelivery("the multipart Content-Type has no boundary", "multipart_invalid")
    spooled = spool_multipart(request.stream, boundary, config.intake.max_file_bytes + 4 * CHUNK, mac,
                              config.data_dir / "incoming", fsync=config.record_sync == "full")
    try:
        signatures.check_mac(mac.hexdigest(), candidates)  # nothing read above is trusted before this
        if spooled.weights is None:
            raise BadDelivery("the multipart body has no 'file' part", "file_missing")
        raw_meta = spooled.fields.get("meta")
        meta = parse_meta(jsontext.loads(raw_meta, "the 'meta' part", "meta_invalid") if raw_meta else None)
    except BaseException:
        spooled.discard()
        raise
    stored = store_file(spooled.weights, config.data_dir / "uploads", spooled.sha256)
    recorded = record_upload(db(), "direct", meta, stored, spooled.sha256, spooled.size,
                             spooled.filename or "upload.safetensors")
    if recorded.created:
        dispatcher(config).enqueue(recorded.upload["id"])
    upload_id = recorded.upload["id"]
    return jsonify(id=upload_id, status_url=url_for("api.upload_status", upload_id=upload_id, _external=True),
                   duplicate=not recorded.created), 202
