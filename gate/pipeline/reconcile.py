"""The reconciler: nothing accepted is lost between "202 accepted" and a decision.

An upload that is still received or scanning must have a live job somewhere: queued, scheduled for a retry,
or started by a worker that is still alive. When none is (Redis was down when the upload arrived, Redis
restarted without persistence, a worker was killed with kill -9), its scan is started again as a new
generation, so jobs left over from the lost run do nothing. After MAX_GENERATIONS runs it is failed, visibly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from gate.pipeline.outcome import fail
from gate.pipeline.start import start_scan
from gate.queues import RedisQueues, job_id
from gate.record.db import writing
from gate.record.uploads import UploadState, transition

log = logging.getLogger(__name__)
GRACE_SECONDS = 10  # an upload this fresh may be between its record and its enqueue
MAX_GENERATIONS = 5
STEPS = ("intake", "probe", "conclude", "failure")
WAITING = {"queued", "deferred", "scheduled"}
ALIVE_KEY = "gate:alive:{}"


def worker_alive(queues: RedisQueues) -> Callable[[str | None], bool]:
    """Whether a worker is alive: `gate worker` keeps a short-lived key fresh while its process runs."""
    return lambda name: bool(name) and bool(queues.connection.exists(ALIVE_KEY.format(name)))


def job_alive(queues: RedisQueues, job_id: str, alive: Callable[[str | None], bool]) -> bool:
    """Whether a job will still run: waiting in Redis, or started by a worker that is alive."""
    status, worker = queues.job_status(job_id)
    status = str(status.value if hasattr(status, "value") else status) if status else None
    return status in WAITING or (status == "started" and alive(worker))


def chain_alive(queues: RedisQueues, base: str, alive: Callable[[str | None], bool]) -> bool:
    """Whether any job of a back-catalogue chain (`base`, then `base`-probe and `base`-conclude) will still run."""
    return any(job_alive(queues, f"{base}{step}", alive) for step in ("", "-probe", "-conclude"))


def run_alive(queues: RedisQueues, upload_id: str, generation: int, alive: Callable[[str | None], bool]) -> bool:
    return any(job_alive(queues, job_id(upload_id, generation, step), alive) for step in STEPS)


def reconcile(db, queues: RedisQueues, grace_seconds: float = GRACE_SECONDS) -> list[str]:
    """Restart the scan of every upload whose run was lost; returns the ids restarted or failed."""
    cutoff = (datetime.now(UTC) - timedelta(seconds=grace_seconds)).isoformat(timespec="milliseconds")
    alive = worker_alive(queues)
    touched = []
    for upload in db["uploads"].rows_where("state in (?, ?) and updated_at < ?",
                                           [UploadState.RECEIVED, UploadState.SCANNING, cutoff]):
        upload_id, generation = upload["id"], upload["generation"] or 0
        if run_alive(queues, upload_id, generation, alive):
            continue
        touched.append(upload_id)
        if generation + 1 >= MAX_GENERATIONS:
            fail(db, upload_id, "reconciler", "abandoned", f"no scan run finished in {MAX_GENERATIONS} tries",
                 {"generation": generation})
            continue
        with writing(db):
            transition(db, upload_id, UploadState.RECEIVED, "reconciler", "scan restarted",
                       {"generation": generation + 1}, {"lost_generation": generation})
        start_scan(queues, upload_id, generation + 1)
        log.warning("upload %s had no live job (generation %d); restarted", upload_id, generation)
    return touched


def reconcile_sets(db, queues: RedisQueues, grace_seconds: float = GRACE_SECONDS) -> list[str]:
    """Restart the screening of every image set whose jobs were lost (gate.images.jobs); returns their ids."""
    from gate.images.jobs import STEPS as SET_STEPS
    from gate.images.jobs import live_sets, restart_set, set_job

    cutoff = (datetime.now(UTC) - timedelta(seconds=grace_seconds)).isoformat(timespec="milliseconds")
    alive = worker_alive(queues)
    touched = []
    for row in live_sets(db, cutoff):
        if any(job_alive(queues, set_job(row["id"], step), alive) for step in SET_STEPS):
            continue
        touched.append(row["id"])
        restart_set(db, queues, row)
        log.warning("image set %s had no live job; restarted", row["id"])
    return touched
