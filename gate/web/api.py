"""The JSON API hubs poll: an upload's state, verdict and reasons."""

from __future__ import annotations

from flask import Blueprint, jsonify

from gate.uploads import get_upload, status
from gate.web.record import db

bp = Blueprint("api", __name__)


@bp.get("/v1/uploads/<upload_id>")
def upload_status(upload_id: str):
    """State (received / scanning / decided / refused / failed), verdict, reasons, and error when refused."""
    return jsonify(status(get_upload(db(), upload_id)))
