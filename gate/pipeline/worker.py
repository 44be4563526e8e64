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
import time
import uuid

from gate import telemetry
from gate.config import Settings
from gate.pipeline.reconcile import ALIVE_KEY
from gate.queues import PROBE_QUEUES, QUEUES, RECORD_QUEUES, Context, RedisQueues, set_context

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2
ALIVE_TTL_SECONDS = 10
HOUSEKEEPING_SECONDS = 5
HOUSEKEEPING_LOCK = "gate:housekeeping"


def _heartbeat(queues: RedisQueues, name: str, ordered: list[str], stop: threading.Event) -> None:
    """Keep this worker's liveness key fresh, and its numbers published (gate.telemetry); nothing else, so no slow
    hub or lock can let it lapse (the reconciler would take a lapsed key for a dead worker and restart its
    scans)."""
    while not stop.is_set():
        try:
            queues.connection.set(ALIVE_KEY.format(name), "1", ex=ALIVE_TTL_SECONDS)
            telemetry.publish(queues.connection, name, ordered, ALIVE_TTL_SECONDS)
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
    from gate.pipeline.reconcile import reconcile, reconcile_sets
    from gate.runtime import open_record

    db = open_record(settings)
    try:
        reconcile(db, queues)
        reconcile_sets(db, queues)  # image sets (training sets, generated images)
        reconcile_deliveries(db, queues)  # Hugging Face webhooks and URL uploads
        deliver_due(settings, db)
        enforce_blocks(settings, db)  # the Hugging Face adapter for blocks (off by default)
    finally:
        db.conn.close()


def _scheduler(queues: RedisQueues, names: list[str], stop: threading.Event) -> None:
    """RQ's scheduler (it moves retries whose wait is over back onto their queues), on a thread of this worker
    rather than the process RQ forks: nothing forks after CUDA is initialised, and a worker killed with -9
    leaves no orphaned scheduler behind. RQ's per-queue locks keep one scheduler at a time per queue."""
    from rq.scheduler import RQScheduler
    from rq.serializers import JSONSerializer

    scheduler = RQScheduler(names, connection=queues.connection, serializer=JSONSerializer, interval=1)
    while not stop.wait(1):
        try:
            scheduler.acquire_locks()
            if scheduler.acquired_locks:
                scheduler.enqueue_scheduled_jobs()
        except Exception as exc:  # noqa: BLE001 - Redis may be down for a while; keep trying
            log.warning("scheduler: %s", exc)


def _await_redis(queues: RedisQueues, stopped) -> bool:
    """Wait, backing off from 0.5 s to 10 s, until Redis answers; False if the worker was asked to stop."""
    pause = 0.5
    while not stopped():
        try:
            queues.connection.ping()
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means not yet
            log.warning("Redis does not answer (%s); trying again in %.1f s", exc, pause)
        time.sleep(pause)
        pause = min(10.0, pause * 2)
    return False


def unsubscribe_bounded(worker) -> None:
    """An RQ worker's unsubscribe, with the wait bounded: redis-py's stop() waits for the listener thread, which
    may sit out its whole 60 s read when no unsubscribe reply comes to wake it (after a Redis restart, or in a
    race at the end of a burst). It is a daemon thread, and closing the connection ends the subscription anyway."""
    from redis.exceptions import RedisError

    if worker.pubsub_thread:
        try:
            worker.pubsub.unsubscribe()
        except (RedisError, OSError):
            pass
        try:
            worker.pubsub_thread.stop(timeout=1)
        except TypeError:  # redis-py before 8 takes no timeout (and does not wait)
            worker.pubsub_thread.stop()
        worker.pubsub.close()


def run_worker(settings: Settings, queue_names: list[str], burst: bool = False, name: str | None = None,
               gpu: bool = False) -> None:
    """Work the given queues (in priority order) until stopped, riding out Redis outages: when Redis goes away
    the RQ worker stops, and this waits for Redis and starts it again (the reconciler then restarts any scan
    the outage lost)."""
    from redis.exceptions import RedisError
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer
    from rq.worker.base import StopRequested

    stopping = threading.Event()

    class Worker(SimpleWorker):
        def request_stop(self, signum, frame):  # SIGTERM, SIGINT: remembered, whatever Redis is doing
            stopping.set()
            try:
                super().request_stop(signum, frame)
            except RedisError:
                raise StopRequested() from None

        unsubscribe = unsubscribe_bounded

        def execute_job(self, job, queue):
            started = time.perf_counter()
            try:
                return super().execute_job(job, queue)
            finally:
                kind = (job.func_name or "unknown").rsplit(".", 1)[-1]
                telemetry.count(f"jobs:{kind}")
                telemetry.count(f"seconds:{kind}", round(time.perf_counter() - started, 3))

        def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
            # A stop that came while RQ still counted the worker busy (a job just ended, the loop past its stop
            # check) would otherwise wait out a dequeue of minutes.
            if stopping.is_set():
                raise StopRequested()
            return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    queues = RedisQueues(settings.redis_url, settings.job_timeout, blocking=True)
    set_context(Context(settings, queues))
    ordered = [q for q in QUEUES if q in queue_names]
    name = name or f"gate-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    if set(ordered) & set(PROBE_QUEUES):
        from probes.jobs import engine

        engine(settings)  # load the base model before taking jobs, not inside the first one
    stop = threading.Event()
    threading.Thread(target=_heartbeat, name="gate-heartbeat", daemon=True,
                     args=(queues, name, ordered, stop)).start()
    threading.Thread(target=_scheduler, name="gate-scheduler", daemon=True, args=(queues, ordered, stop)).start()
    if set(ordered) & set(RECORD_QUEUES):  # only a worker that has the record keeps house
        threading.Thread(target=_housekeeper, name="gate-housekeeping", daemon=True,
                         args=(queues, name, settings, stop)).start()
    log.info("worker %s listening on %s", name, ", ".join(ordered))
    try:
        while not stopping.is_set():
            worker = Worker([queues.queue(q) for q in ordered], connection=queues.connection,
                            serializer=JSONSerializer, name=name)
            try:
                worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
            except (RedisError, OSError) as exc:  # RQ's start-up and teardown talk to Redis too
                log.warning("worker %s stopped: %s", name, exc)
            if burst or stopping.is_set() or worker._stop_requested:
                return
            log.warning("worker %s lost Redis; waiting for it to come back", name)
            try:
                if not _await_redis(queues, stopping.is_set):
                    return
            except StopRequested:
                return
            try:
                worker.register_death()  # a stale registration under this name would block the new one
            except RedisError:
                pass
    finally:
        stop.set()
