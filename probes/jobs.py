"""The GPU worker's job: render and embed one upload's LoRA with the resident engine.

It never opens the gate's record. It gets a JSON request (what intake learned, the probe terms, where the
file is), re-validates the file itself (a worker trusts no earlier reading), and hands the outcome as JSON
to the gate's conclude job on the intake queue.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import urllib.request
from pathlib import Path

from gate.config import Settings
from gate.intake import inspect_file
from gate.queues import INTAKE, context, job_id
from probes.contract import UnsupportedLora

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
_engines: dict[str, object] = {}
_lock = threading.Lock()


class ProbeRequestError(Exception):
    """The request cannot be served by this worker (wrong file, wrong configuration)."""


def engine(settings: Settings):
    """The resident probe engine: the base pipeline and embedder, loaded once per process."""
    key = f"{settings.base_model}|{settings.embedder}|{settings.probe_set}|{settings.device}"
    with _lock:
        if key not in _engines:
            from probes.engine import ProbeEngine
            from probes.probe_set import load_probe_set

            log.info("loading base model %s and embedder %s", settings.base_model, settings.embedder)
            _engines[key] = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set),
                                        settings.device, cache_dir=settings.base_render_cache)
        return _engines[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(settings: Settings, request: dict, spool: Path) -> Path:
    """The upload's file: from the shared disk when this worker sees it, else over the gate's HTTP API."""
    local = Path(request["file_path"])
    if local.is_file():
        return local
    if not request.get("file_url"):
        raise ProbeRequestError(f"{local} is not on this machine and the gate gave no file URL (set public_url "
                                "and worker_token on the gate)")
    target = spool / "upload.safetensors"
    fetch = urllib.request.Request(request["file_url"], headers={"Authorization": f"Bearer {settings.worker_token}"})
    with urllib.request.urlopen(fetch, timeout=60) as answer, open(target, "wb") as out:
        while chunk := answer.read(CHUNK):
            out.write(chunk)
    return target


def probe_upload(request: dict) -> dict:
    """Render the probe set with and without the upload's LoRA; queue the gate's conclusion."""
    from probes.contract import outcome_to_json
    from probes.likelihood import ReferenceSet

    settings, queues = context().settings, context().queues
    upload_id, generation = request["upload_id"], int(request["generation"])
    probe_engine = engine(settings)
    if request["probe_set"] != probe_engine.probe_set.id:
        raise ProbeRequestError(f"the gate asked for probe set {request['probe_set']}, this worker renders "
                                f"{probe_engine.probe_set.id}")
    references = [ReferenceSet.from_dict(r) for r in request.get("references") or []]
    with tempfile.TemporaryDirectory(prefix="gate-probe-") as spool:
        path = _fetch(settings, request, Path(spool))
        if _sha256(path) != request["file_sha256"]:
            raise ProbeRequestError(f"upload {upload_id}'s file does not have the sha256 intake recorded")
        inspection = inspect_file(path, settings.intake)
        if not inspection.ok:
            raise ProbeRequestError(f"upload {upload_id}'s file fails intake here: {inspection.error.code}")
        try:
            outcome = probe_engine.probe(path, lora_format=request["lora_format"], family=request["family"],
                                         modules=request["modules"], terms=request["terms"],
                                         references=references)
        except UnsupportedLora as exc:
            probed = {"unsupported": exc.message}
        else:
            probed = outcome_to_json(outcome, probe_engine.embedder_id)
    queues.enqueue(INTAKE, "gate.pipeline.jobs.conclude_upload", upload_id, generation, probed,
                   job_id=job_id(upload_id, generation, "conclude"))
    return {"upload_id": upload_id, "renders": len(probed.get("probes", [])),
            "timings": probed.get("timings", {}), "unsupported": probed.get("unsupported")}
