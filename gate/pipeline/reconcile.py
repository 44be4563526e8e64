"""The reconciler: nothing accepted is lost between "202 accepted" and a decision.

An upload that is still received or scanning must have a live job somewhere: queued, scheduled for a retry,
or started by a worker that is still alive. When none is (Redis was down when the upload arrived, Redis
restarted without persistence, a worker was killed with kill -9), its scan is started again as a new
generation, so jobs left over from the lost run do nothing. After MAX_GENERATIONS runs it is failed, visibly.
"""

from __future__ import annotations

import logging
import time
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
# A worker starts a job it took within milliseconds; one still unstarted this long after the reconciler first saw
# it taken is lost (a few housekeeping rounds, and longer than a worker's liveness key lives).
TAKEN_SECONDS = 15
_taken: dict[str, float] = {}  # job id -> when the reconciler first saw it taken and not started (monotonic)


class Liveness:
    """Whether a worker is alive (`gate worker` keeps a short-lived key fresh while its process runs), called
    with its name; and the jobs workers have taken but not started, as Redis had them when this was made (one
    look a reconcile round)."""

    def __init__(self, queues: RedisQueues):
        self.queues = queues
        self.taken = queues.taken() if hasattr(queues, "taken") else set()  # in-process queues take nothing

    def __call__(self, name: str | None) -> bool:
        return bool(name) and bool(self.queues.connection.exists(ALIVE_KEY.format(name)))


def worker_alive(queues: RedisQueues) -> Liveness:
    return Liveness(queues)


def job_alive(queues: RedisQueues, job_id: str, alive: Callable[[str | None], bool]) -> bool:
    """Whether a job will still run: waiting in Redis, or started by a worker that is alive. A job "queued" that
    a worker took and has not started (`alive.taken`) is alive for TAKEN_SECONDS, then lost: the worker died
    between taking and starting it, and RQ would put it back only at its next maintenance, minutes later."""
    status, worker = queues.job_status(job_id)
    status = str(status.value if hasattr(status, "value") else status) if status else None
    if status == "queued" and job_id in getattr(alive, "taken", ()):
        now = time.monotonic()
        for stale in [j for j, seen in _taken.items() if now - seen > 10 * TAKEN_SECONDS]:
            del _taken[stale]  # jobs restarted long ago under a new generation
        return now - _taken.setdefault(job_id, now) < TAKEN_SECONDS
    _taken.pop(job_id, None)
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
