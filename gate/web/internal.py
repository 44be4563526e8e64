"""The API probe workers use when they run on a machine without the gate's disk: an upload's file, and any
other file the record knows by its sha256 (reference images, previews, image sets), which the worker checks
against that sha256 and caches by it."""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from flask import Blueprint, request, send_file

from gate.errors import GateError
from gate.record.uploads import get_upload
from gate.registry.snapshot import KEEP, snapshot_root
from gate.web.context import db, settings
from probes.snapshot import FILES

bp = Blueprint("internal", __name__, url_prefix="/internal")


class WorkerTokenError(GateError):
    code = "worker_token_mismatch"


def _check_worker() -> None:
    token = settings().worker_token
    if not token:
        raise GateError("worker_token is not set: workers on other machines cannot fetch files", "not_configured")
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise WorkerTokenError("a worker token is required (Authorization: Bearer <worker_token>)")


class BlobNotFound(GateError):
    code = "blob_not_found"


class SnapshotNotFound(GateError):
    code = "registry_snapshot_not_found"


@bp.get("/blobs/<sha256>")
def blob(sha256: str):
    """A file the record knows by its sha256: a reference image, a preview, an image set's stored file."""
    _check_worker()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise BlobNotFound("a blob is named by its sha256: 64 lowercase hex digits")
    for sql in ("select path from character_references where sha256 = ?",
                "select path from upload_previews where sha256 = ?",
                "select file_path from image_sets where file_path like ?"):  # sets are stored as <sha256>.<kind>
        argument = f"%/{sha256}.%" if "like" in sql else sha256
        for (path,) in db().execute(sql, [argument]).fetchall():
            if path and Path(path).is_file():
                return send_file(path, mimetype="application/octet-stream", download_name=sha256)
    raise BlobNotFound(f"no file with sha256 {sha256} in this gate's record")


@bp.get("/uploads/<upload_id>/file")
def upload_file(upload_id: str):
    """The weights of an upload, for a probe worker presenting the worker token."""
    _check_worker()
    upload = get_upload(db(), upload_id)
    return send_file(upload["file_path"], mimetype="application/octet-stream", download_name=f"{upload_id}.safetensors")


@bp.get("/registry/<version>/<name>")
def registry_file(version: str, name: str):
    """A file of a registry snapshot (probes/snapshot.py), for a probe worker without the gate's disk; the worker
    checks the snapshot against its version before it uses it."""
    _check_worker()
    path = snapshot_root(settings().data_dir) / version / name
    if not re.fullmatch(r"reg-[0-9a-f]{24}", version) or name not in FILES or not path.is_file():
        raise SnapshotNotFound(f"no registry snapshot file {version}/{name} on this gate (it keeps the last "
                               f"{KEEP} versions)")
    return send_file(path, mimetype="application/octet-stream", download_name=name)
