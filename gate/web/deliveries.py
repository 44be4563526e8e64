"""Deliveries that name weights elsewhere: URL uploads (POST /v1/uploads with a JSON body, signed like the
multipart form) and the status of any delivery (GET /v1/deliveries/<id>). The fetch runs on the intake queue."""

from __future__ import annotations

import hashlib
import json

from flask import Blueprint, jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from gate import jsontext
from gate.errors import GateError
from gate.hubs import signatures
from gate.hubs.deliveries import get_delivery, record_delivery, status
from gate.hubs.fetch import check_url
from gate.pipeline.dispatch import accept_delivery
from gate.record.uploads import parse_meta
from gate.web.context import db, settings

bp = Blueprint("deliveries", __name__)
MAX_BODY_BYTES = 256 * 1024


class UrlUploadInvalid(GateError):
    code = "body_invalid"


@bp.get("/v1/deliveries/<delivery_id>")
def delivery_status(delivery_id: str):
    """State (received / fetching / fetched / ignored / failed / invalid), the uploads made, and the error."""
    return jsonify(status(db(), get_delivery(db(), delivery_id)))


def signed_json(secret: str, max_bytes: int, what: str) -> tuple[bytes, dict]:
    """This request's JSON object body, at most `max_bytes`, signed over the raw body: (raw, parsed)."""
    signature = signatures.parse_header(request.headers.get("X-Gate-Signature"))
    signatures.check_timestamp(signature.timestamp)
    if (request.content_length or 0) > max_bytes:
        raise RequestEntityTooLarge(f"{what}'s body is at most {max_bytes} bytes")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise RequestEntityTooLarge(f"{what}'s body is at most {max_bytes} bytes")
    signatures.verify_body(signature, raw, secret, request.headers.get(signatures.DIGEST_HEADER))
    body = jsontext.loads(raw, "the body", UrlUploadInvalid.code)
    if not isinstance(body, dict):
        raise UrlUploadInvalid(f"{what}'s body must be a JSON object")
    return raw, body


def url_upload(secret: str):
    """A hub names a LoRA by URL: `{"url": ..., "meta": {...}}`, signed over the raw body; fetched later."""
    raw, body = signed_json(secret, MAX_BODY_BYTES, "a URL upload")
    if "url" not in body:
        raise UrlUploadInvalid("the body has no 'url'", "url_missing")
    url = check_url(body["url"], settings().fetch.allowed_hosts)  # refused now, not after a 202
    meta = parse_meta(body.get("meta"))
    # The same URL with the same hub record is one delivery, however often the hub retries it.
    key = "url|" + hashlib.sha256(json.dumps([url, meta], sort_keys=True).encode()).hexdigest()
    recorded = record_delivery(db(), "url", key, raw.decode("utf-8", errors="replace"), url=url, meta=meta)
    delivery = accept_delivery(settings(), db(), recorded)
    return jsonify(id=delivery["id"], status=delivery["state"], duplicate=not recorded.created,
                   status_url=url_for("deliveries.delivery_status", delivery_id=delivery["id"], _external=True)), 202
