"""Hubs pass on their uploaders' disputes (token auth, JSON)."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from gate.errors import GateError
from gate.record.uploads import status
from gate.review import queue as review
from gate.web.auth import machine
from gate.web.context import db, request_json, settings

bp = Blueprint("disputes", __name__)


@bp.post("/v1/uploads/<upload_id>/dispute")
@machine("dispute.file")
def dispute(upload_id: str):
    """`{"statement": "..."}`: the uploader disputes a block or quarantine; the item returns to the queue."""
    body = request_json()
    if not isinstance(body, dict):
        raise GateError('send JSON: {"statement": "the uploader\'s words"}', "body_invalid")
    upload = review.file_dispute(db(), g.account, upload_id, body.get("statement"),
                                 settings().review.dispute_deadline_days)
    return jsonify({**status(upload), "dispute": {"state": "open", "deadline": upload["dispute_deadline"],
                                                  "filed_at": upload["disputed_at"]}}), 202
