"""The JSON API hubs poll: an upload's state, verdict and reasons."""

from __future__ import annotations

from flask import Blueprint, jsonify, send_from_directory, url_for

from gate.pipeline.dispatch import dispatcher
from gate.pipeline.outcome import evidence_dir
from gate.pipeline.progress import progress
from gate.record.uploads import get_upload, status
from gate.web.context import db, settings

bp = Blueprint("api", __name__)


@bp.get("/v1/uploads/<upload_id>")
def upload_status(upload_id: str):
    """State (received / scanning / decided / refused / failed), verdict, reasons, and error when refused; while
    the scan runs, its progress (stage, and an estimate once this gate has timed a probe)."""
    row = get_upload(db(), upload_id)
    upload = status(row)
    if (scan := progress(db(), row, dispatcher(settings()).queues)) is not None:
        upload["progress"] = scan
    if (evidence_dir(settings(), upload_id) / "index.html").exists():
        upload["evidence_url"] = url_for("api.upload_evidence", upload_id=upload_id, name="index.html",
                                         _external=True)
    return jsonify(upload)


@bp.get("/v1/uploads/<upload_id>/evidence/<name>")
def upload_evidence(upload_id: str, name: str):
    """The evidence page and its images: probe renders, base renders, matched references."""
    get_upload(db(), upload_id)
    return send_from_directory(evidence_dir(settings(), upload_id), name)
