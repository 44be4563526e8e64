"""`gate worker`: an RQ worker for the gate's queues.

It is a SimpleWorker (no fork per job): a probe worker keeps the base model resident, and forking after CUDA
is initialised breaks CUDA. A worker that serves the intake or catalogue queue has the record (SQLite) and
also does the housekeeping: the reconciler and outbox delivery, under a Redis lock so that one worker at a
time does it. A probe-only worker never opens the record; it needs only Redis (and the gate's HTTP API
when the upload files are not on its disk).
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid

from gate.config import Settings
from gate.pipeline.reconcile import ALIVE_KEY
from gate.queues import PROBE_QUEUES, QUEUES, RECORD_QUEUES, Context, RedisQueues, set_context

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2
ALIVE_TTL_SECONDS = 10
HOUSEKEEPING_SECONDS = 5
HOUSEKEEPING_LOCK = "gate:housekeeping"


def _heartbeat(queues: RedisQueues, name: str, stop: threading.Event) -> None:
    """Keep this worker's liveness key fresh; nothing else, so no slow hub or lock can let it lapse (the
    reconciler would take a lapsed key for a dead worker and restart its scans)."""
    while not stop.is_set():
        try:
            queues.connection.set(ALIVE_KEY.format(name), "1", ex=ALIVE_TTL_SECONDS)
        except Exception as exc:  # noqa: BLE001 - Redis may be down for a while; keep trying
            log.warning("heartbeat: %s", exc)
        stop.wait(HEARTBEAT_SECONDS)


def _housekeeper(queues: RedisQueues, name: str, settings: Settings, stop: threading.Event) -> None:
    """Every few seconds, under a Redis lock (one worker at a time): the reconciler, callbacks to hubs, Hugging
    Face block actions. Its own thread: a hub that answers slowly delays only the next round."""
    while not stop.is_set():
        try:
            if queues.connection.set(HOUSEKEEPING_LOCK, name, nx=True, ex=HOUSEKEEPING_SECONDS):
                _housekeeping(settings, queues)
        except Exception as exc:  # noqa: BLE001 - Redis may be down for a while; keep trying
            log.warning("housekeeping: %s", exc)
        stop.wait(HOUSEKEEPING_SECONDS)


def _housekeeping(settings: Settings, queues: RedisQueues) -> None:
    from gate.hubs.callbacks import deliver_due
    from gate.hubs.enforcement import enforce_blocks
    from gate.pipeline.ingest import reconcile_deliveries
    from gate.pipeline.reconcile import reconcile
    from gate.runtime import open_record

    db = open_record(settings)
    try:
        reconcile(db, queues)
        reconcile_deliveries(db, queues)  # Hugging Face webhooks and URL uploads
        deliver_due(settings, db)
        enforce_blocks(settings, db)  # the Hugging Face adapter for blocks (off by default)
    finally:
        db.conn.close()


def run_worker(settings: Settings, queue_names: list[str], burst: bool = False, name: str | None = None,
               gpu: bool = False) -> None:
    """Work the given queues (in priority order) until stopped."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    queues = RedisQueues(settings.redis_url, settings.job_timeout, blocking=True)
    set_context(Context(settings, queues))
    ordered = [q for q in QUEUES if q in queue_names]
    name = name or f"gate-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    if set(ordered) & set(PROBE_QUEUES):
        from probes.jobs import engine

        engine(settings)  # load the base model before taking jobs, not inside the first one
    stop = threading.Event()
    threading.Thread(target=_heartbeat, name="gate-heartbeat", daemon=True, args=(queues, name, stop)).start()
    if set(ordered) & set(RECORD_QUEUES):  # only a worker that has the record keeps house
        threading.Thread(target=_housekeeper, name="gate-housekeeping", daemon=True,
                         args=(queues, name, settings, stop)).start()
    worker = SimpleWorker([queues.queue(q) for q in ordered], connection=queues.connection,
                          serializer=JSONSerializer, name=name)
    log.info("worker %s listening on %s", name, ", ".join(ordered))
    try:
        # RQ's scheduler (spaced retries) is a forked process: never on a GPU worker, where CUDA is initialised.
        worker.work(burst=burst, with_scheduler=not gpu, logging_level="INFO")
    finally:
        stop.set()
