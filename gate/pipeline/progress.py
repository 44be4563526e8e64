"""How far along a live scan is, and about how long it has left: the `progress` of the status API.

The record says which stage a scan is in (gate.record.uploads.Stage) and since when. The estimate is the
median time a probe worker spent on the last probes (probe_times, kept as each answer comes in), times the
probes queued ahead of this one, shared among the probe workers; it is left out until a probe has finished.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

from gate.queues import PROBE, Queues, RedisQueues, job_id
from gate.record.uploads import Stage, UploadState

RECENT = 20  # probe times the estimate takes the median of
# Uploads that wait for the same probe workers as a live one and came before it (in the order recorded: rowid,
# where two timestamps may share a millisecond).
AHEAD = ("SELECT count(*) FROM uploads WHERE state IN ('received', 'scanning') "
         "AND rowid < (SELECT rowid FROM uploads WHERE id = ?) "
         "AND coalesce(stage, '') NOT IN ('concluding', 'probing_catalogue')")


def _seconds_since(moment: str) -> float:
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(moment)).total_seconds())


def probe_seconds(db) -> tuple[float, int] | None:
    """(median seconds a probe worker spends on one live upload, how many probes that is of), or None."""
    work = [row[0] for row in db.execute("SELECT work FROM probe_times WHERE lane = ? ORDER BY id DESC LIMIT ?",
                                         [Stage.PROBING, RECENT]).fetchall()]
    return (statistics.median(work), len(work)) if work else None


def probe_workers(queues: Queues | None) -> int:
    """Workers taking live probe jobs: RQ's count with Redis, else the one scan worker process."""
    if not isinstance(queues, RedisQueues):
        return 1
    from rq import Worker

    try:
        return max(1, Worker.count(queue=queues.queue(PROBE)))
    except Exception:  # noqa: BLE001 - Redis down: the estimate is a guess either way
        return 1


def probe_job(queues: Queues | None, upload: dict) -> str | None:
    """The probe job's state as the queue knows it (queued, started), where the queue can say."""
    if not isinstance(queues, RedisQueues):
        return None
    try:
        status, _ = queues.job_status(job_id(upload["id"], upload["generation"] or 0, "probe"))
    except Exception:  # noqa: BLE001 - Redis down: the stage from the record still stands
        return None
    return str(status.value if hasattr(status, "value") else status) if status else None


def progress(db, upload: dict, queues: Queues | None = None) -> dict | None:
    """Stage, time in it and, for a live upload once probe times exist, an estimate; None once the scan ended."""
    if upload["state"] == UploadState.RECEIVED:
        stage, since = "received", upload["created_at"]
    elif upload["state"] == UploadState.SCANNING:
        stage, since = upload["stage"] or Stage.SCREENING, upload["stage_at"] or upload["updated_at"]
    else:
        return None
    elapsed = _seconds_since(since)
    answer: dict = {"stage": str(stage), "since": since, "seconds_in_stage": round(elapsed, 1)}
    if stage == Stage.PROBING and (job := probe_job(queues, upload)):
        answer["probe_job"] = job
    if stage in (Stage.CONCLUDING, Stage.PROBING_CATALOGUE):
        return answer  # nearly done, or behind every live upload: no estimate worth giving
    ahead = db.execute(AHEAD, [upload["id"]]).fetchone()[0]
    answer["ahead"] = ahead
    measured = probe_seconds(db)
    if measured is None:
        answer["estimate_basis"] = "no probe has finished on this gate yet"
        return answer
    work, probes = measured
    workers = probe_workers(queues)
    rounds = math.ceil((ahead + 1) / workers)
    running = stage == Stage.PROBING and (answer.get("probe_job") == "started" or ahead < workers)
    answer["estimate_seconds"] = round(max(0.0, rounds * work - (elapsed if running else 0.0)), 1)
    answer["estimate_basis"] = (f"median probe time of the last {probes} on this gate ({work:.1f} s), "
                                f"{ahead} ahead, {workers} probe worker{'s' if workers != 1 else ''}")
    return answer
