"""The GPU worker's jobs: everything that needs torch, with the resident engine.

- `probe_upload`: render and embed one upload's LoRA (and measure the likelihood probe);
- `likelihood_upload`: the likelihood probe alone, for back-catalogue screening of one character;
- `embed_references`: embed registered reference images (the record's workers hold no embedder).

They never open the gate's record. Each gets a JSON request (what the gate's CPU side learned, where the files
are), re-validates every file itself (a worker trusts no earlier reading), and hands its result as JSON to the
gate job the request names as its `reply` (by default the live scan's conclude job on the intake queue).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from gate import telemetry
from gate.config import Settings
from gate.intake import inspect_file
from gate.queues import INTAKE, context, job_id
from probes.contract import UnsupportedLora
from probes.pixels import shown_rgb
from probes.snapshot import file_sha256

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
_engines: dict[str, object] = {}
_lock = threading.Lock()


REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP")  # as the registry accepts them; no other decoder sees the bytes
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # an image of a screened set, as the gate's image checks allow


class ProbeRequestError(Exception):
    """The request cannot be served by this worker (wrong file, wrong configuration, evidence it cannot get):
    the upload fails with this code after the retries, rather than be decided on less."""

    failure_code = "probe_request_failed"  # the upload's error.code (not an HTTP refusal)


def engine(settings: Settings):
    """The resident probe engine: the base pipeline and embedder, loaded once per process."""
    key = _engine_key(settings)
    with _lock:
        if key not in _engines:
            from probes.engine import ProbeEngine
            from probes.probe_set import load_probe_set

            log.info("loading base model %s and embedder %s", settings.base_model, settings.embedder)
            _engines[key] = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set),
                                        settings.device, cache_dir=settings.base_render_cache)
        return _engines[key]


def _engine_key(settings: Settings) -> str:
    return f"{settings.base_model}|{settings.embedder}|{settings.probe_set}|{settings.device}"


def image_engine(settings: Settings):
    """The resident image embedder that screens images (sets, previews): loaded once per process, on first use;
    the probe engine's own when it is the same model and loaded already (one copy of a CLIP on the GPU)."""
    key = f"image|{settings.image_embedder}|{settings.device}"
    with _lock:
        if key not in _engines:
            from probes.embed import ImageScreeningEmbedder
            from probes.quiet import quiet_libraries

            quiet_libraries()
            render = _engines.get(_engine_key(settings))
            same = render is not None and Path(settings.image_embedder) == Path(settings.embedder)
            log.info("loading image embedder %s", settings.image_embedder)
            _engines[key] = ImageScreeningEmbedder(settings.image_embedder, settings.device or None,
                                                   render.embedder if same else None)
        return _engines[key]


_checked: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: each local file hashed once


def _local_sha256(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        _checked[key] = file_sha256(path)
    return _checked[key]


def materialize(settings: Settings, path: str, sha256: str) -> Path:
    """A file the gate names by path and sha256, on this worker: at its path when this worker shares the gate's
    disk and the file there has that sha256; else from this worker's cache, fetched from the gate by its sha256
    (GET /internal/blobs/<sha256>) and checked. ProbeRequestError when neither: the job fails, and is retried,
    rather than go on with less evidence."""
    local = Path(path)
    if settings.worker_shared_disk and _local_sha256(local) == sha256:
        return local
    cached = (settings.cache_dir or settings.data_dir / "cache") / "blobs" / sha256[:2] / sha256
    if cached.is_file() and _local_sha256(cached) == sha256:
        telemetry.count("cache_hits:blob")
        return cached
    telemetry.count("cache_misses:blob")
    if not (settings.public_url and settings.worker_token):
        raise ProbeRequestError(f"{local.name} (sha256 {sha256[:12]}) is not on this machine as the gate recorded "
                                "it, and the gate gave no way to fetch it (set GATE_PUBLIC_URL and GATE_WORKER_TOKEN)")
    url = f"{settings.public_url.rstrip('/')}/internal/blobs/{sha256}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    fetch = urllib.request.Request(url, headers={"Authorization": f"Bearer {settings.worker_token}"})
    try:
        with urllib.request.urlopen(fetch, timeout=60) as answer, \
                tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as out:
            while chunk := answer.read(CHUNK):
                out.write(chunk)
    except (OSError, urllib.error.URLError) as exc:
        raise ProbeRequestError(f"{local.name} (sha256 {sha256[:12]}) could not be fetched from the gate: {exc}") \
            from None
    if file_sha256(Path(out.name)) != sha256:
        Path(out.name).unlink(missing_ok=True)
        raise ProbeRequestError(f"the gate served {sha256[:12]} with other bytes")
    os.replace(out.name, cached)
    _cache_grew(settings, cached.stat().st_size)
    return cached


_cache_bytes: list[int] = []  # this worker's cache size: counted once, then added to as files come in


def _cache_grew(settings: Settings, size: int) -> None:
    if not _cache_bytes:
        cache = settings.cache_dir or settings.data_dir / "cache"
        _cache_bytes.append(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) - size)
    _cache_bytes[0] += size
    telemetry.note(cache_bytes=_cache_bytes[0])


_snapshots: dict[str, object] = {}  # version -> Snapshot: a version's files never change
KEEP_SNAPSHOTS = 3  # registry versions kept in a worker's cache


def registry_snapshot(settings: Settings, version: str, gate_path: str | None = None):
    """The registry snapshot a request names, checked to be that version: the gate's own (at `gate_path`) when
    this worker shares its disk, else this worker's cached copy, else fetched from
    GET /internal/registry/<version>/<file>. ProbeRequestError when none can be had: the job fails and is
    retried, never decided on less."""
    from probes.snapshot import FILES, SnapshotError, read_snapshot

    if version in _snapshots:
        telemetry.count("cache_hits:registry")
        telemetry.note(registry_version=version)
        return _snapshots[version]
    telemetry.count("cache_misses:registry")
    if not re.fullmatch(r"reg-[0-9a-f]{24}", version):
        raise ProbeRequestError(f"{version!r} is not a registry version")
    shared = Path(gate_path) if gate_path else settings.data_dir / "registry" / version
    cache = (settings.cache_dir or settings.data_dir / "cache") / "registry"
    directory = shared if settings.worker_shared_disk and shared.is_dir() else cache / version
    if not directory.is_dir():
        if not (settings.public_url and settings.worker_token):
            raise ProbeRequestError(f"registry snapshot {version} is not on this machine, and the gate gave no way "
                                    "to fetch it (set GATE_PUBLIC_URL and GATE_WORKER_TOKEN)")
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=_made(cache)))
        try:
            for name in FILES:
                _download(settings, f"/internal/registry/{version}/{name}", staging / name)
            try:
                os.replace(staging, directory)
            except OSError:
                if not directory.is_dir():  # else a worker sharing this cache fetched it first
                    raise
        except OSError as exc:
            raise ProbeRequestError(f"registry snapshot {version} could not be fetched from the gate: {exc}") \
                from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for stale in sorted(cache.glob("reg-*"), key=lambda p: p.stat().st_mtime)[:-KEEP_SNAPSHOTS]:
            shutil.rmtree(stale, ignore_errors=True)
            _snapshots.pop(stale.name, None)
            _cache_bytes.clear()  # counted again on the next fetch
    try:
        _snapshots[version] = read_snapshot(directory, version)
    except SnapshotError as exc:
        if directory.parent == cache:  # a damaged copy is fetched again on the retry
            shutil.rmtree(directory, ignore_errors=True)
        raise ProbeRequestError(str(exc)) from None
    if directory.parent == cache:
        _cache_grew(settings, sum(p.stat().st_size for p in directory.iterdir()))
    telemetry.note(registry_version=version)
    return _snapshots[version]


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _download(settings: Settings, route: str, target: Path) -> None:
    fetch = urllib.request.Request(f"{settings.public_url.rstrip('/')}{route}",
                                   headers={"Authorization": f"Bearer {settings.worker_token}"})
    with urllib.request.urlopen(fetch, timeout=120) as answer, open(target, "wb") as out:
        while chunk := answer.read(CHUNK):
            out.write(chunk)


def _fetch(settings: Settings, request: dict, spool: Path) -> Path:
    """The upload's file: from the shared disk when this worker sees it, else over the gate's HTTP API."""
    local = Path(request["file_path"])
    if settings.worker_shared_disk and local.is_file():
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


def _reply(request: dict, result: dict, default: dict) -> None:
    """Hand the result to the gate job the request names (only a gate job: a probe worker calls nothing else)."""
    reply = request.get("reply") or default
    if not str(reply.get("func", "")).startswith("gate."):
        raise ProbeRequestError(f"a reply must go to a gate job, not {reply.get('func')!r}")
    context().queues.enqueue(reply["queue"], reply["func"], *reply.get("args", ()), result, job_id=reply["job_id"])


def _checked_upload(settings: Settings, request: dict, spool: Path) -> Path:
    """The upload's file, fetched if need be, with the sha256 the gate recorded, passing intake here too."""
    path = _fetch(settings, request, spool)
    if file_sha256(path) != request["file_sha256"]:
        raise ProbeRequestError(f"upload {request.get('upload_id')}'s file does not have the sha256 intake recorded")
    inspection = inspect_file(path, settings.intake)
    if not inspection.ok:
        raise ProbeRequestError(f"upload {request.get('upload_id')}'s file fails intake here: {inspection.error.code}")
    return path


def _engine_for(settings: Settings, request: dict):
    probe_engine = engine(settings)
    if request["probe_set"] != probe_engine.probe_set.id:
        raise ProbeRequestError(f"the gate asked for probe set {request['probe_set']}, this worker renders "
                                f"{probe_engine.probe_set.id}")
    return probe_engine


def _encoded(vector) -> str:
    """A vector as the gate reads it back: base64 of its float32 bytes."""
    return base64.b64encode(np.asarray(vector, np.float32).tobytes()).decode("ascii")


def _reference_vectors(embed, wanted: list[dict]) -> dict[str, str]:
    """Embed reference images the gate has no vector for yet, with `embed` (the probe engine's embedder or the
    image embedder's references): {reference id: base64 float32 vector}."""
    if not wanted:
        return {}
    from PIL import Image

    images = []
    for ref in wanted:
        path = materialize(context().settings, ref["path"], ref["sha256"])
        with Image.open(path, formats=REFERENCE_FORMATS) as image:
            images.append(shown_rgb(image))
    vectors = embed(images)
    return {str(ref["id"]): _encoded(vector)
            for ref, vector in zip(wanted, vectors, strict=True)}


def _materialized(settings: Settings, reference_set: dict) -> dict:
    """A character's reference set with every image on this worker (see materialize); a gate from before
    sha256s were sent names paths alone, read where they are."""
    digests = reference_set.get("sha256s")
    if not digests:
        return reference_set
    return {**reference_set, "paths": [str(materialize(settings, path, digest))
                                       for path, digest in zip(reference_set["paths"], digests, strict=True)]}


def probe_upload(request: dict) -> dict:
    """Render the probe set with and without the upload's LoRA; queue the gate's conclusion."""
    from probes.contract import outcome_to_json
    from probes.likelihood import ReferenceSet

    started = time.perf_counter()
    settings = context().settings
    upload_id, generation = request["upload_id"], int(request["generation"])
    probe_engine = _engine_for(settings, request)
    # A request queued by a gate from before registry snapshots lists its references; a newer one names a version.
    references = [ReferenceSet.from_dict(_materialized(settings, r)) for r in request.get("references") or []]
    picked = _candidates(settings, probe_engine, request) if request.get("registry") else None
    with tempfile.TemporaryDirectory(prefix="gate-probe-") as spool:
        path = _checked_upload(settings, request, Path(spool))
        try:
            outcome = probe_engine.probe(path, lora_format=request["lora_format"], family=request["family"],
                                         modules=request["modules"], terms=request["terms"],
                                         references=references, candidates=picked)
        except UnsupportedLora as exc:
            probed = {"unsupported": exc.message, "embedder": probe_engine.embedder_id}
        else:
            probed = outcome_to_json(outcome, probe_engine.embedder_id)
            if picked is not None:  # checked against the snapshot it names, measured or not (no likelihood table)
                probed["scope"] = {"registry": request["registry"], **probed["scope"]}
    probed["reference_vectors"] = _reference_vectors(probe_engine.embed, request.get("embed") or [])
    if request.get("previews") or request.get("image_references"):  # judged with the image embedder
        images = image_engine(settings)
        probed["image_embedder"] = images.vectors_id
        probed["preview_vectors"] = _preview_vectors(images, request.get("previews") or [])
        probed["image_reference_vectors"] = _reference_vectors(images.references,
                                                               request.get("image_references") or [])
    probed["seconds"] = round(time.perf_counter() - started, 3)  # this worker's time on it: the gate's estimates
    _reply(request, probed, {"queue": INTAKE, "func": "gate.pipeline.jobs.conclude_upload",
                             "args": [upload_id, generation], "job_id": job_id(upload_id, generation, "conclude")})
    return {"upload_id": upload_id, "renders": len(probed.get("probes", [])),
            "timings": probed.get("timings", {}), "unsupported": probed.get("unsupported")}


def _candidates(settings: Settings, probe_engine, request: dict):
    """The shortlist over the registry snapshot the request names (probes/shortlist.py)."""
    from probes.shortlist import candidates_for

    snapshot = registry_snapshot(settings, request["registry"], request.get("registry_path"))
    if snapshot.embedder != probe_engine.embedder_id:
        raise ProbeRequestError(f"registry snapshot {snapshot.version} holds vectors of {snapshot.embedder}, this "
                                f"worker embeds with {probe_engine.embedder_id}")
    return candidates_for(snapshot, request.get("named") or (), probe_engine.probe_set.likelihood,
                          lambda path, digest: str(materialize(settings, path, digest)))


def likelihood_upload(request: dict) -> dict:
    """The likelihood probe alone on one upload's LoRA (nothing rendered): the gains on the request's
    references, handed to the gate job the request names."""
    from probes.likelihood import ReferenceSet

    settings = context().settings
    probe_engine = _engine_for(settings, request)
    references = [ReferenceSet.from_dict(_materialized(settings, r)) for r in request["references"]]
    with tempfile.TemporaryDirectory(prefix="gate-probe-") as spool:
        path = _checked_upload(settings, request, Path(spool))
        try:
            gains = probe_engine.likelihood_gains(path, lora_format=request["lora_format"], family=request["family"],
                                                  modules=request["modules"], triggers=request["terms"]["trigger"],
                                                  references=references)
            measured = {"gains": [gain.to_dict() for gain in gains]}
        except UnsupportedLora as exc:
            measured = {"unsupported": exc.message}
    measured["probe_set"] = probe_engine.probe_set.id
    _reply(request, measured, {})
    return {"upload_id": request.get("upload_id"), "gains": len(measured.get("gains", []))}


def embed_references(request: dict) -> dict:
    """Embed registered reference images and hand the vectors to the gate job the request names."""
    probe_engine = engine(context().settings)
    vectors = _reference_vectors(probe_engine.embed, request["references"])
    _reply(request, {"embedder": probe_engine.embedder_id, "vectors": vectors}, {})
    return {"embedded": len(vectors)}


def _set_image(archive, path: Path, wanted: dict) -> np.ndarray | None:
    """One image of a set, by its name in the archive (or the whole file), if it still has the sha256 the gate
    recorded; None when it cannot be read here (the gate refuses it alone)."""
    from PIL import Image

    try:
        if archive is not None:
            info = archive.getinfo(wanted["name"])
            if info.file_size > MAX_IMAGE_BYTES:
                return None
            with archive.open(info) as stream:
                data = stream.read(MAX_IMAGE_BYTES + 1)
        else:
            data = path.read_bytes()[: MAX_IMAGE_BYTES + 1]
        if len(data) > MAX_IMAGE_BYTES or hashlib.sha256(data).hexdigest() != wanted["sha256"]:
            return None
        with Image.open(io.BytesIO(data), formats=REFERENCE_FORMATS) as image:
            return shown_rgb(image)
    except (KeyError, OSError, ValueError, SyntaxError, zipfile.BadZipFile, Image.DecompressionBombError):
        return None


def _preview_vectors(images_engine, wanted: list[dict]) -> dict[str, str]:
    """The upload's preview images the gate has no vector for, as the image embedder's views: {sha256: base64
    float32 vector}. One that cannot be read here (another machine, no shared disk) is left out; the gate judges
    the others."""
    settings = context().settings
    images = [(w["sha256"], _set_image(None, materialize(settings, w["path"], w["sha256"]), w)) for w in wanted]
    images = [(digest, image) for digest, image in images if image is not None]
    if not images:
        return {}
    vectors = images_engine.images([image for _, image in images])
    return {digest: _encoded(vector)
            for (digest, _), vector in zip(images, vectors, strict=True)}


def embed_images(request: dict) -> dict:
    """Embed the images of a set the gate has no vectors for (names in its archive, checked by sha256), 64 at
    a time, with the image embedder's views, and hand the vectors to the gate job the request names; references
    without the image embedder's vectors too."""
    settings = context().settings
    images_engine = image_engine(settings)
    path = materialize(settings, request["path"], Path(request["path"]).stem)  # stored as <sha256>.<kind>
    vectors: dict[str, str] = {}
    archive = zipfile.ZipFile(path) if request.get("archive") else None
    try:
        wanted = request["images"]
        for start in range(0, len(wanted), 64):
            batch = [(w["sha256"], _set_image(archive, path, w)) for w in wanted[start:start + 64]]
            batch = [(digest, image) for digest, image in batch if image is not None]
            if batch:
                embedded = images_engine.images([image for _, image in batch])
                for (digest, _), vector in zip(batch, embedded, strict=True):
                    vectors[digest] = _encoded(vector)
    finally:
        if archive is not None:
            archive.close()
    _reply(request, {"embedder": images_engine.vectors_id, "vectors": vectors,
                     "reference_vectors": _reference_vectors(images_engine.references, request.get("embed") or [])},
           {})
    return {"set_id": request.get("set_id"), "embedded": len(vectors)}
