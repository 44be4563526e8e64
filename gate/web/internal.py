"""The API probe workers use: fetching an upload's file when they run on a machine without the gate's disk."""

from __future__ import annotations

import hmac

from flask import Blueprint, request, send_file

from gate.errors import GateError
from gate.record.uploads import get_upload
from gate.web.context import db, settings

bp = Blueprint("internal", __name__, url_prefix="/internal")


class WorkerTokenError(GateError):
    code = "worker_token_mismatch"


@bp.get("/uploads/<upload_id>/file")
def upload_file(upload_id: str):
    """The weights of an upload, for a probe worker presenting the worker token."""
    token = settings().worker_token
    if not token:
        raise GateError("worker_token is not set: workers on other machines cannot fetch files", "not_configured")
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise WorkerTokenError("a worker token is required (Authorization: Bearer <worker_token>)")
    upload = get_upload(db(), upload_id)
    return send_file(upload["file_path"], mimetype="application/octet-stream", download_name=f"{upload_id}.safetensors")
