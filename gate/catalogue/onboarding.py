"""`gate catalogue import`: bring a hub's existing catalogue into the gate.

The source is a directory of .safetensors files or a manifest (JSON Lines or CSV) of entries, each with a local
`path` or a `url` and the hub's record of it (hub, model_id, version_id, uploader, title, tags, description,
trigger_words). Each entry is copied into the gate's store and recorded as an upload with source "import",
keyed like a delivery (hub record and bytes), so importing again adds nothing. Its scan is a live upload's scan
on the low-priority lane: intake on the `catalogue` queue, rendering on `catalogue_probe`, the conclusion on
`catalogue` (or the whole chain in this process, without Redis).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database

from gate.config import Settings
from gate.errors import GateError
from gate.pipeline.jobs import CATALOGUE_LANE, live_upload, record_failure, request_probe
from gate.pipeline.outcome import begin_scan
from gate.queues import CATALOGUE, Context, InlineQueues, context, set_context
from gate.record.uploads import (
    HUB_FIELDS,
    LIST_FIELDS,
    MetaError,
    UploadState,
    parse_meta,
    record_upload,
    store_file,
)
from gate.runtime import thread_record

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
SOURCE = "import"


class ImportProblem(GateError):
    code = "import_invalid"


@dataclass(frozen=True)
class Entry:
    where: str  # "manifest.jsonl:12" or the file's path: for messages
    meta: dict
    path: Path | None = None
    url: str | None = None


@dataclass
class Imported:
    where: str
    upload_id: str | None = None
    created: bool = False
    state: str | None = None
    error: dict | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ImportReport:
    entries: list[Imported] = field(default_factory=list)

    @property
    def created(self) -> int:
        return sum(e.created for e in self.entries)

    @property
    def errors(self) -> int:
        return sum(e.error is not None for e in self.entries)

    def to_dict(self) -> dict:
        return {"entries": len(self.entries), "created": self.created,
                "already_imported": len(self.entries) - self.created - self.errors, "errors": self.errors,
                "items": [e.to_dict() for e in self.entries]}


def _entry(raw: object, where: str, base_dir: Path) -> Entry:
    if not isinstance(raw, dict):
        raise ImportProblem(f"{where}: an entry must be an object", "import_entry_invalid")
    path, url = raw.get("path"), raw.get("url")
    if bool(path) == bool(url) or not isinstance(path or url, str):
        raise ImportProblem(f"{where}: give exactly one of path or url, as a string", "import_entry_invalid")
    try:
        meta = parse_meta({k: raw[k] for k in (*HUB_FIELDS, *LIST_FIELDS) if raw.get(k) not in (None, "")})
    except MetaError as exc:
        raise ImportProblem(f"{where}: {exc.message}", "import_entry_invalid") from None
    if url:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ImportProblem(f"{where}: only http(s) URLs are fetched, not {scheme or 'this'}", "import_url_invalid")
        return Entry(where, meta, url=url)
    return Entry(where, meta, path=(base_dir / path) if not Path(path).is_absolute() else Path(path))


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(";") if part.strip()]


def read_entries(source: Path, hub: str | None = None) -> Iterator[Entry | ImportProblem]:
    """The entries of a directory or manifest; a malformed entry is yielded as its problem, not raised."""
    source = Path(source)
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*.safetensors") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            yield Entry(str(path), {"hub": hub or SOURCE, "model_id": relative, "title": path.stem}, path=path)
        return
    if not source.is_file():
        raise ImportProblem(f"{source}: neither a directory nor a manifest file", "import_source_invalid")
    if source.stat().st_size > MAX_MANIFEST_BYTES:
        raise ImportProblem(f"{source}: a manifest may be at most {MAX_MANIFEST_BYTES} bytes", "import_source_invalid")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportProblem(f"{source}: cannot read it as UTF-8 text ({exc})", "import_source_invalid") from None
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows: Iterator[tuple[int, object]] = ((n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip())
        for number, line in rows:
            where = f"{source.name}:{number}"
            try:
                raw = json.loads(line)
                if isinstance(raw, dict) and hub and not raw.get("hub"):
                    raw["hub"] = hub
                yield _entry(raw, where, source.parent)
            except ValueError as exc:
                yield ImportProblem(f"{where}: not JSON ({exc})", "import_entry_invalid")
            except ImportProblem as exc:
                yield exc
    elif suffix == ".csv":
        for number, raw in enumerate(csv.DictReader(io.StringIO(text)), 2):
            where = f"{source.name}:{number}"
            raw = {k: v for k, v in raw.items() if k is not None}
            for key in LIST_FIELDS:
                if raw.get(key):
                    raw[key] = _split(raw[key])
            if hub and not raw.get("hub"):
                raw["hub"] = hub
            try:
                yield _entry(raw, where, source.parent)
            except ImportProblem as exc:
                yield exc
    else:
        raise ImportProblem(f"{source}: a manifest is .jsonl or .csv", "import_source_invalid")


def _copy(stream, target, limit: int, where: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise ImportProblem(f"{where}: larger than {limit} bytes", "file_too_large")
        digest.update(chunk)
        target.write(chunk)
    return digest.hexdigest(), size


def fetch(entry: Entry, spool_dir: Path, limit: int) -> tuple[Path, str, int]:
    """The entry's bytes in a spool file (hashed on the way), from disk or over HTTP, bounded by `limit`."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".weights") as target:
        spool = Path(target.name)
        try:
            if entry.path is not None:
                with open(entry.path, "rb") as stream:
                    sha256, size = _copy(stream, target, limit, entry.where)
            else:
                request = urllib.request.Request(entry.url, headers={"User-Agent": "lora-gate-import"})
                with urllib.request.urlopen(request, timeout=60) as answer:
                    sha256, size = _copy(answer, target, limit, entry.where)
        except OSError as exc:
            spool.unlink(missing_ok=True)
            raise ImportProblem(f"{entry.where}: cannot fetch ({exc})", "import_fetch_failed") from None
        except ImportProblem:
            spool.unlink(missing_ok=True)
            raise
    return spool, sha256, size


def import_entry(settings: Settings, db: Database, entry: Entry) -> Imported:
    """Copy one entry into the store and record it as an upload (the same entry twice is one upload)."""
    spool, sha256, size = fetch(entry, settings.data_dir / "incoming", settings.intake.max_file_bytes)
    stored = store_file(spool, settings.data_dir / "uploads", sha256)
    filename = Path(urllib.parse.urlsplit(entry.url).path).name if entry.url else entry.path.name
    recorded = record_upload(db, SOURCE, entry.meta, stored, sha256, size, filename or "import.safetensors")
    return Imported(entry.where, recorded.upload["id"], recorded.created, recorded.upload["state"])


def import_catalogue(settings: Settings, db: Database, source: Path, hub: str | None = None) -> ImportReport:
    """Record every entry of a directory or manifest; problems are reported per entry, never raised."""
    report = ImportReport()
    for entry in read_entries(source, hub):
        if isinstance(entry, ImportProblem):
            report.entries.append(Imported(entry.message.split(":")[0], error=entry.to_dict()))
            continue
        try:
            report.entries.append(import_entry(settings, db, entry))
        except GateError as exc:
            report.entries.append(Imported(entry.where, error=exc.to_dict()))
    return report


def to_scan(db: Database, report: ImportReport) -> list[tuple[str, int]]:
    """(upload id, generation) of the imported uploads still waiting for their scan: new ones, and any an
    interrupted import left."""
    waiting: dict[str, int] = {}
    for item in report.entries:
        if item.upload_id:
            upload = db["uploads"].get(item.upload_id)
            if upload["state"] in (UploadState.RECEIVED, UploadState.SCANNING):
                waiting[item.upload_id] = upload["generation"] or 0
    return list(waiting.items())


def queue_scans(settings: Settings, upload_ids: list[tuple[str, int]]) -> None:
    """Put imported uploads' scans on the catalogue queue (Redis). The job id is the scan's intake step, so the
    reconciler sees the run as alive while it waits behind live uploads."""
    from gate.queues import RedisQueues, job_id

    queues = RedisQueues(settings.redis_url, settings.job_timeout)
    for upload_id, generation in upload_ids:
        queues.enqueue(CATALOGUE, "gate.catalogue.onboarding.scan_upload", upload_id, generation,
                       job_id=job_id(upload_id, generation, "intake"))


def scan_here(settings: Settings, upload_ids: list[tuple[str, int]], tick=None) -> None:
    """Scan imported uploads in this process, one by one, each chain of jobs run inline (without Redis)."""
    set_context(Context(settings, InlineQueues(settings)), thread_only=True)
    for upload_id, generation in upload_ids:
        try:
            scan_upload(upload_id, generation)
        except Exception as exc:  # noqa: BLE001 - recorded as failed, like a queue job after its retries
            record_failure(upload_id, generation, "catalogue scan", f"{type(exc).__name__}: {exc}")
        if tick:
            tick()


def scan_upload(upload_id: str, generation: int = 0) -> str:
    """A `catalogue` queue job: an imported upload's scan, as a live one's (intake and screening here, rendering
    on a probe worker, `conclude_upload` after), on the catalogue's queues, behind live uploads."""
    upload = live_upload(upload_id, generation, "catalogue scan")
    if upload is None:
        return "skipped"
    begin_scan(thread_record(context().settings), upload, " (catalogue)")
    return request_probe(upload, generation, CATALOGUE_LANE)
