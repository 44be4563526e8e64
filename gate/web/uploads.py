"""Hub deliveries. Each is authenticated, written to disk and recorded durably, then answered 202 at once;
the scan happens on the queue."""

from __future__ import annotations

import functools
import hashlib

from flask import Blueprint, current_app, jsonify, request, url_for
from werkzeug.exceptions import UnsupportedMediaType

from gate import jsontext
from gate.errors import GateError
from gate.hubs import signatures
from gate.hubs.spool import CHUNK, MAX_PARTS, BadDelivery, spool_multipart
from gate.images.previews import store_previews
from gate.pipeline.dispatch import dispatcher
from gate.record.uploads import parse_meta, record_upload, store_file
from gate.web.context import db, settings
from gate.web.limits import takes_body

ENVELOPE = 4 * CHUNK  # the multipart framing and the hub's record around the weights

bp = Blueprint("hooks", __name__)


@bp.post("/v1/uploads")
@takes_body(lambda config: config.intake.max_file_bytes + ENVELOPE)
def direct_upload():
    """A hub pushes a LoRA: multipart with a `file` part and an optional `meta` JSON part, signed (or a JSON
    body naming a URL: gate.web.deliveries)."""
    config = settings()
    if not config.upload_secret:
        raise GateError("GATE_UPLOAD_SECRET is not set: this gate cannot authenticate uploads", "not_configured")
    if request.mimetype == "application/json":  # a URL upload: the weights are fetched on the queue
        from gate.web.deliveries import url_upload

        return url_upload(config.upload_secret)
    spooled, meta = signed_delivery(config, config.intake.max_file_bytes + ENVELOPE, "the weights")
    previews = store_previews(spooled.previews, config.data_dir / "previews")
    stored = store_file(spooled.weights, config.data_dir / "uploads", spooled.sha256)
    recorded = record_upload(db(), "direct", meta, stored, spooled.sha256, spooled.size,
                             spooled.filename or "upload.safetensors", previews=previews)
    if recorded.created:
        dispatcher(config).enqueue(recorded.upload["id"])
    upload_id = recorded.upload["id"]
    return jsonify(id=upload_id, status_url=url_for("api.upload_status", upload_id=upload_id, _external=True),
                   duplicate=not recorded.created), 202


def signed_delivery(config, limit: int, file_is: str, max_parts: int = MAX_PARTS):
    """A signed multipart delivery with its `file` part (`file_is` says what it must hold; a route that takes
    more parts may take `image` parts instead) and the hub's record (`meta`), validated; nothing is kept of one
    that fails."""
    spooled = signed_multipart(config, limit, max_parts)
    try:
        if spooled.weights is None and not spooled.images:
            raise BadDelivery(f"the multipart body has no 'file' part ({file_is})", "file_missing")
        raw_meta = spooled.fields.get("meta")
        meta = parse_meta(jsontext.loads(raw_meta, "the 'meta' part", "meta_invalid") if raw_meta else None)
    except BaseException:
        spooled.discard()
        raise
    return spooled, meta


def signed_multipart(config, limit: int, max_parts: int = MAX_PARTS):
    """This request's multipart body, authenticated and spooled (its `file` part on disk, the rest in memory): a
    v2 signature is checked on the head and the body must hash to its digest; a v1 body is held in memory, never
    on disk, until its signature is checked."""
    if not request.mimetype == "multipart/form-data":
        raise UnsupportedMediaType("send multipart/form-data with a 'file' part (and an optional 'meta' part)")
    signature = signatures.parse_header(request.headers.get("X-Gate-Signature"))
    signatures.check_timestamp(signature.timestamp)
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        raise BadDelivery("the multipart Content-Type has no boundary", "multipart_invalid")
    spool = functools.partial(spool_multipart, boundary=boundary, limit=limit, max_parts=max_parts,
                              spool_dir=config.data_dir / "incoming", fsync=config.record_sync == "full")
    if not signature.v2:
        with current_app.extensions["gate_unverified"].hold(request.remote_addr or "", request.content_length):
            body = _read_whole(request.stream, request.content_length)
            signatures.verify_body(signature, body, config.upload_secret)
            return spool(_Reader(memoryview(body)), mac=None)
    digest = signatures.check_digest_signature(signature, request.headers.get(signatures.DIGEST_HEADER),
                                               config.upload_secret)
    body_hash = hashlib.sha256()
    spooled = spool(request.stream, mac=body_hash)
    try:
        signatures.check_body_digest(digest, body_hash.hexdigest())
    except BaseException:
        spooled.discard()
        raise
    return spooled


class _Reader:
    """Reads a held body in pieces without copying it whole (io.BytesIO would, for a bytearray)."""

    def __init__(self, view: memoryview):
        self.view, self.at = view, 0

    def read(self, size: int) -> bytes:
        piece = bytes(self.view[self.at:self.at + size])
        self.at += len(piece)
        return piece


def _read_whole(stream, length: int) -> bytes:
    """The body, read into one buffer of its declared length (no second copy while it waits to be checked)."""
    body, filled = bytearray(length), 0
    view = memoryview(body)
    while filled < length and (chunk := stream.read(min(length - filled, CHUNK))):
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled < length:
        raise BadDelivery(f"the body ended {length - filled} bytes short of its Content-Length", "multipart_invalid")
    return body
