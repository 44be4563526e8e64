"""`gate rescan`: re-render the back catalogue (or a filtered part) with the current probe set.

A run is recorded with its filters and one item per upload, so an interrupted run resumes where it stopped and
never redoes an upload it finished. The driver (the CLI) hands items to the low-priority `catalogue` queue at a
limited rate; workers take them only when live uploads are done. Each item is a scan in three jobs, as a live
upload's: screened on the `catalogue` queue, rendered by a probe worker (`catalogue_probe`), then matched and
decided on `catalogue`, recorded in one transaction with its journal entry, its stored embeddings, the hub's
message when the verdict changed, and the item's progress. Without Redis the driver runs each chain itself.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlite_utils import Database

from gate.catalogue import index
from gate.config import Settings
from gate.detection.evidence import write_evidence
from gate.errors import GateError
from gate.pipeline.jobs import (
    ReferencesPending,
    attach_probed,
    conclusion_matcher,
    job_matcher,
    reply_to,
    upload_request,
)
from gate.pipeline.outcome import decision_fields, evidence_dir, redecide
from gate.pipeline.reconcile import chain_alive
from gate.queues import CATALOGUE, CATALOGUE_PROBE, Context, InlineQueues, context, set_context
from gate.record.db import writing
from gate.record.uploads import UploadState, get_upload, hub_meta, journal
from gate.runtime import thread_record

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
LOST_CHECK_SECONDS = 10


class RescanError(GateError):
    code = "rescan_invalid"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_rate(text: str | None) -> float | None:
    """'N/min' (or N/s, N/h) as items per minute; None for no limit."""
    if not text:
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|min|m|h|hour)\s*", text)
    if not found or float(found.group(1)) <= 0:
        raise RescanError(f"rate {text!r}: write it as N/min (or N/s, N/h) with N > 0", "rate_invalid")
    per = {"s": 60, "sec": 60, "min": 1, "m": 1, "h": 1 / 60, "hour": 1 / 60}[found.group(2)]
    return float(found.group(1)) * per


def parse_instant(text: str | None, option: str) -> str | None:
    """An ISO date or time as the record writes its timestamps (UTC, to the millisecond), so that comparing the
    text compares instants; a date is its midnight in UTC, a time without a zone is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RescanError(f"{option} {text!r}: write an ISO date or time, e.g. 2026-01-01 or 2026-01-01T12:00Z",
                          "date_invalid") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Filters:
    """Which decided uploads a run covers; empty fields do not filter."""

    since: str | None = None  # received at or after (ISO date or time)
    until: str | None = None  # received before
    hubs: tuple[str, ...] = ()
    families: tuple[str, ...] = ()  # base family, as intake inferred it
    verdicts: tuple[str, ...] = ()  # the earlier verdict
    characters: tuple[str, ...] = ()  # uploads whose reasons or matches name one of these characters
    include_current: bool = False  # also uploads already scanned with the current probe set
    limit: int | None = None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} in ({', '.join('?' * len(values))})"


def select_uploads(db: Database, filters: Filters, probe_set_id: str) -> list[str]:
    """The decided uploads a run with these filters covers, oldest first."""
    where, params = ["u.state = ?"], [UploadState.DECIDED.value]
    if filters.since:
        where.append("u.created_at >= ?")
        params.append(filters.since)
    if filters.until:
        where.append("u.created_at < ?")
        params.append(filters.until)
    if filters.hubs:
        where.append(_in("u.hub", filters.hubs))
        params.extend(filters.hubs)
    if filters.verdicts:
        where.append(_in("u.verdict", filters.verdicts))
        params.extend(filters.verdicts)
    if filters.families:
        where.append(f"exists (select 1 from catalogue_scans s where s.upload_id = u.id and "
                     f"{_in('s.base_family', filters.families)})")
        params.extend(filters.families)
    if filters.characters:
        character = "json_extract(j.value, '$.character')"
        named = " or ".join(f"exists (select 1 from json_each(coalesce(u.{column}, '[]')) j where "
                            f"{_in(character, filters.characters)})" for column in ("reasons", "matches"))
        where.append(f"({named})")
        params.extend(filters.characters * 2)
    if not filters.include_current:
        where.append("coalesce(u.probe_set, '') != ?")
        params.append(probe_set_id)
    sql = f"select u.id from uploads u where {' and '.join(where)} order by u.created_at, u.id"
    if filters.limit:
        sql += f" limit {int(filters.limit)}"
    return [row[0] for row in db.execute(sql, params).fetchall()]


def create_run(db: Database, filters: Filters, probe_set_id: str, rate_per_min: float | None) -> dict:
    """Record a run and its items (every upload the filters cover, pending)."""
    upload_ids = select_uploads(db, filters, probe_set_id)
    run_id = f"rs_{secrets.token_hex(6)}"
    with writing(db):
        db["rescan_runs"].insert({"id": run_id, "filters": json.dumps(filters.to_dict()), "probe_set": probe_set_id,
                                  "rate_per_min": rate_per_min, "state": "running", "total": len(upload_ids),
                                  "created_at": _now()})
        db["rescan_items"].insert_all([{"run_id": run_id, "upload_id": upload_id, "position": i, "state": "pending"}
                                       for i, upload_id in enumerate(upload_ids)])
    return get_run(db, run_id)


def get_run(db: Database, run_id: str) -> dict:
    rows = list(db["rescan_runs"].rows_where("id = ?", [run_id]))
    if not rows:
        raise RescanError(f"no rescan run {run_id!r}", "rescan_not_found")
    return rows[0]


def counts(db: Database, run_id: str) -> dict[str, int]:
    found = {state: 0 for state in ("pending", "queued", "done", "failed", "skipped")}
    for row in db.query("select state, count(*) as n from rescan_items where run_id = ? group by state", [run_id]):
        found[row["state"]] = row["n"]
    return found


def finished(db: Database, run_id: str) -> int:
    tally = counts(db, run_id)
    return tally["done"] + tally["failed"] + tally["skipped"]


def report(db: Database, run_id: str) -> dict:
    """What a run changed: verdicts before -> after, and every upload whose verdict moved."""
    run = get_run(db, run_id)
    transitions: dict[str, int] = {}
    changed = []
    for item in db["rescan_items"].rows_where("run_id = ? and state = 'done'", [run_id], order_by="position"):
        key = f"{item['verdict_before']} -> {item['verdict_after']}"
        transitions[key] = transitions.get(key, 0) + 1
        if item["verdict_before"] != item["verdict_after"]:
            changed.append({"upload_id": item["upload_id"], "before": item["verdict_before"],
                            "after": item["verdict_after"], "probe_set_before": item["probe_set_before"],
                            "probe_set_after": item["probe_set_after"]})
    failures = [{"upload_id": i["upload_id"], "state": i["state"], "error": i["error"]}
                for i in db["rescan_items"].rows_where("run_id = ? and state in ('failed', 'skipped')", [run_id])]
    return {"run": run_id, "state": run["state"], "probe_set": run["probe_set"], "filters": json.loads(run["filters"]),
            "total": run["total"], "counts": counts(db, run_id), "transitions": transitions, "changed": changed,
            "not_rescanned": failures, "created_at": run["created_at"], "finished_at": run["finished_at"]}


# ---------------------------------------------------------------------------------------------------------
# The job


def _item(db: Database, run_id: str, upload_id: str) -> dict | None:
    return next(iter(db["rescan_items"].rows_where("run_id = ? and upload_id = ?", [run_id, upload_id])), None)


def _failed(db: Database, run_id: str, upload_id: str, exc: Exception) -> None:
    db["rescan_items"].update((run_id, upload_id), {"state": "failed", "error": f"{exc}"[:500], "finished_at": _now()})


def _pending_upload(db: Database, run_id: str, upload_id: str) -> dict | None:
    """The upload when its item still wants work (and the item marked skipped when the upload moved on)."""
    item = _item(db, run_id, upload_id)
    if item is None or item["state"] in ("done", "skipped"):
        log.info("rescan %s: %s is %s; nothing to do", run_id, upload_id, item and item["state"])
        return None
    upload = get_upload(db, upload_id)
    if upload["state"] != UploadState.DECIDED:
        db["rescan_items"].update((run_id, upload_id), {"state": "skipped", "finished_at": _now(),
                                                        "error": f"the upload is {upload['state']}, not decided"})
        return None
    return upload


def rescan_upload(run_id: str, upload_id: str) -> str:
    """A `catalogue` queue job: screen one upload of a run again and ask a probe worker to re-render it
    (`rescan_concluded` decides); does nothing for a finished item."""
    settings = context().settings
    db = thread_record(settings)
    upload = _pending_upload(db, run_id, upload_id)
    if upload is None:
        return "skipped"
    try:
        matcher = job_matcher(settings)
        result = matcher.screen(upload["file_path"], upload["filename"], hub_meta(upload))
        if not result.inspection.ok:
            raise RescanError(f"the file no longer passes intake: {result.inspection.error.code}", "file_changed")
        if result.decided_without_rendering:
            return _conclude(settings, db, matcher, run_id, upload, result)
        base = job_id(run_id, upload_id)
        request = upload_request(settings, upload, matcher.probe_request(result, hub_meta(upload)["trigger_words"]),
                                 reply_to(CATALOGUE, "gate.catalogue.rescan.rescan_concluded", [run_id, upload_id],
                                          f"{base}-conclude"))
        context().queues.enqueue(CATALOGUE_PROBE, "probes.jobs.probe_upload", request, job_id=f"{base}-probe",
                                 retry=False)
    except Exception as exc:
        _failed(db, run_id, upload_id, exc)
        raise
    return "probing"


def rescan_concluded(run_id: str, upload_id: str, probed: dict) -> str:
    """A `catalogue` queue job: the probe worker's renders of a rescanned upload, matched and decided again."""
    settings = context().settings
    db = thread_record(settings)
    upload = _pending_upload(db, run_id, upload_id)
    if upload is None:
        return "skipped"
    try:
        matcher = conclusion_matcher(settings, probed, f"{job_id(run_id, upload_id)}-references", CATALOGUE_PROBE)
        result = matcher.screen(upload["file_path"], upload["filename"], hub_meta(upload))
        if not result.inspection.ok:
            raise RescanError(f"the file no longer passes intake: {result.inspection.error.code}", "file_changed")
        attach_probed(matcher, result, probed)
    except ReferencesPending:
        raise  # retried once the new references are embedded; the item is still on its way
    except Exception as exc:
        _failed(db, run_id, upload_id, exc)
        raise
    return _conclude(settings, db, matcher, run_id, upload, result)


def _conclude(settings: Settings, db: Database, matcher, run_id: str, upload: dict, result) -> str:
    """Decide a rescanned upload and record the item, in one transaction; a person's decision stands."""
    upload_id = upload["id"]
    matcher.conclude(result)
    before, after = upload["verdict"], result.verdict
    kept = bool(upload.get("reviewed_by")) and after != before  # a person's decision stands against a machine's
    if result.decision is not None and not kept:  # the evidence a moderator decided on stays as it was
        write_evidence(result, matcher.characters, evidence_dir(settings, upload_id),
                       upload["title"] or upload["filename"], matcher.thresholds)
    with writing(db):
        if _item(db, run_id, upload_id)["state"] == "done":  # a second copy of this job finished first
            return "skipped"
        index.record_scan(db, upload_id, result, matcher.engine.embedder_id)
        if kept:
            journal(db, upload_id, "rescan", f"rescanned: {after}, but {before} kept (decided by "
                    f"{upload['reviewed_by']})", upload["state"], upload["state"],
                    {"run": run_id, "verdict_before": before, "rescan_verdict": after,
                     "probe_set_after": result.probe_set})
        else:
            redecide(db, upload_id, "rescan", f"rescanned: {before} -> {after}",
                     decision_fields(result, matcher.characters),
                     {"run": run_id, "verdict_before": before, "verdict_after": after,
                      "probe_set_before": upload["probe_set"], "probe_set_after": result.probe_set},
                     notify=after != before)
        db["rescan_items"].update((run_id, upload_id), {
            "state": "done", "verdict_before": before, "verdict_after": before if kept else after,
            "error": f"kept: {upload['reviewed_by']} decided {before}; the new probes say {after}" if kept else None,
            "probe_set_before": upload["probe_set"], "probe_set_after": result.probe_set, "finished_at": _now()})
    return str(before if kept else after)


# ---------------------------------------------------------------------------------------------------------
# The driver


def job_id(run_id: str, upload_id: str) -> str:
    return f"rescan-{run_id}-{upload_id}"


def _item_alive(queues, run_id: str, upload_id: str, alive) -> bool:
    """Whether any job of an item's chain (rescan, probe, conclusion) will still run."""
    return chain_alive(queues, job_id(run_id, upload_id), alive)


def _fail_lost(db: Database, queues, run_id: str, alive) -> None:
    """Queued items whose job Redis no longer has, or whose worker died, are failed (a resume retries them)."""
    for item in db["rescan_items"].rows_where("run_id = ? and state = 'queued'", [run_id]):
        if _item_alive(queues, run_id, item["upload_id"], alive):
            continue
        if _item(db, run_id, item["upload_id"])["state"] == "queued":
            status = queues.job_status(job_id(run_id, item["upload_id"]))[0]
            db["rescan_items"].update((run_id, item["upload_id"]), {
                "state": "failed", "finished_at": _now(),
                "error": f"job lost ({getattr(status, 'value', status) or 'gone'})"})


def drive(settings: Settings, db: Database, run_id: str, tick: Callable[[int], None],
          rate_per_min: float | None = None) -> dict:
    """Hand a run's unfinished items to the catalogue queue at the run's rate (or run them here without Redis),
    calling tick(finished) as items finish, until every item is finished; returns the run's report."""
    run = get_run(db, run_id)
    rate = rate_per_min if rate_per_min is not None else run["rate_per_min"]
    interval = 60.0 / rate if rate else 0.0
    queues = None
    if settings.redis_url:
        from gate.pipeline.reconcile import worker_alive
        from gate.queues import RedisQueues

        queues = RedisQueues(settings.redis_url, settings.job_timeout)
        alive = worker_alive(queues)
    else:  # each item's chain of jobs runs inline, here
        set_context(Context(settings, InlineQueues(settings)), thread_only=True)
    next_slot = time.monotonic()
    tick(finished(db, run_id))
    items = list(db["rescan_items"].rows_where("run_id = ? and state in ('pending', 'queued', 'failed')", [run_id],
                                               order_by="position"))
    for item in items:
        if queues is not None and item["state"] == "queued" and _item_alive(queues, run_id, item["upload_id"], alive):
            continue  # still on its way from before the interruption
        while time.monotonic() < next_slot:  # the rate limit
            time.sleep(min(POLL_SECONDS, next_slot - time.monotonic()))
            tick(finished(db, run_id))
        next_slot = max(next_slot, time.monotonic()) + interval
        if queues is None:
            try:
                rescan_upload(run_id, item["upload_id"])
            except Exception as exc:  # noqa: BLE001 - recorded on the item; the run goes on
                log.warning("rescan of %s failed: %s", item["upload_id"], exc)
        else:
            db["rescan_items"].update((run_id, item["upload_id"]), {"state": "queued", "error": None})
            queues.enqueue(CATALOGUE, "gate.catalogue.rescan.rescan_upload", run_id, item["upload_id"],
                           job_id=job_id(run_id, item["upload_id"]), retry=False)
        tick(finished(db, run_id))
    last_check = time.monotonic()
    while counts(db, run_id)["queued"]:
        time.sleep(POLL_SECONDS)
        tick(finished(db, run_id))
        if time.monotonic() - last_check >= LOST_CHECK_SECONDS:
            last_check = time.monotonic()
            _fail_lost(db, queues, run_id, alive)
    tick(finished(db, run_id))
    db["rescan_runs"].update(run_id, {"state": "finished", "finished_at": _now()})
    return report(db, run_id)
