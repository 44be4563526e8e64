"""Where the web gate and the CLI hand accepted work: the process's queues (RQ on Redis; without it, `gate serve`'s
scan worker process, or jobs in-process for the library and tests), with the in-process queues' housekeeping
(outbox delivery, resuming what a previous run left).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading

from gate.config import Settings
from gate.hubs.callbacks import deliver_due
from gate.hubs.deliveries import DeliveryState, get_delivery, update_delivery
from gate.hubs.enforcement import enforce_blocks
from gate.pipeline.embedded import worker_process
from gate.pipeline.ingest import resume_deliveries
from gate.pipeline.start import fetch_job, scan_job
from gate.queues import InProcessQueues, RedisQueues, make_queues
from gate.record.db import open_db, writing
from gate.record.uploads import get_upload, pending
from gate.runtime import thread_record

log = logging.getLogger(__name__)
HANDOFF_BATCH = 200


class Dispatcher:
    """What the web gate hands accepted uploads to: the process's queues, plus their housekeeping when jobs
    run in-process (outbox delivery, picking up uploads a previous run left pending)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._handoff: queue.SimpleQueue | None = None
        self._handoff_lock = threading.Lock()
        child = worker_process()  # set only in `gate serve`'s own process, never in the worker it starts
        if child is not None and not settings.redis_url:
            self.queues = child  # `gate serve`'s scan worker process: it resumes the record's pending work itself
            return
        self.queues = make_queues(settings, on_idle=self.housekeeping)
        if isinstance(self.queues, InProcessQueues):
            db = open_db(settings.db_path, settings.record_sync)
            for upload_id in pending(db):  # after a restart, nothing is lost
                self.enqueue(upload_id, get_upload(db, upload_id)["generation"] or 0)
            resume_deliveries(db, self.queues)  # Hugging Face webhooks and URL uploads
            from gate.images.jobs import live_sets, restart_set

            for row in live_sets(db):  # image sets: their jobs died with the process too
                restart_set(db, self.queues, row)

    def enqueue(self, upload_id: str, generation: int = 0) -> None:
        """Start an upload's scan; with Redis down the upload stays recorded and the reconciler starts it."""
        self.hand_off(*scan_job(upload_id, generation))

    def hand_off(self, queue_name: str, func: str, args: tuple, job: str) -> None:
        """Queue a job for something the web gate has just recorded.

        With Redis, a background thread hands jobs over in batches (one round trip each), so a hub's delivery waits
        only for its record, never for Redis; what this process dies holding is recorded as received, and the
        reconciler starts it."""
        if not isinstance(self.queues, RedisQueues):
            self.queues.enqueue(queue_name, func, *args, job_id=job)
            return
        with self._handoff_lock:
            if self._handoff is None:
                self._handoff = queue.SimpleQueue()
                threading.Thread(target=self._hand_over, name="gate-handoff", daemon=True).start()
        self._handoff.put((queue_name, func, args, job))

    def _hand_over(self) -> None:
        while True:
            batch = [self._handoff.get()]
            while len(batch) < HANDOFF_BATCH:
                try:
                    batch.append(self._handoff.get_nowait())
                except queue.Empty:
                    break
            try:
                self.queues.enqueue_many(batch)
            except Exception as exc:  # noqa: BLE001 - recorded is what matters; the reconciler retries
                log.warning("could not enqueue %d uploads (%s); the reconciler will", len(batch), exc)

    def depth(self) -> dict[str, int]:
        return self.queues.depth()

    def health(self) -> str:
        return self.queues.health()

    def housekeeping(self) -> None:
        deliver_due(self.settings, thread_record(self.settings))
        enforce_blocks(self.settings, thread_record(self.settings))  # the Hugging Face adapter (off by default)


_dispatchers: dict[str, Dispatcher] = {}
_lock = threading.Lock()


def dispatcher(settings: Settings) -> Dispatcher:
    """The dispatcher for this process and record (one per database file)."""
    key = f"{settings.db_path}|{settings.redis_url}"
    with _lock:
        if key not in _dispatchers:
            _dispatchers[key] = Dispatcher(settings)
        return _dispatchers[key]


def accept_delivery(settings: Settings, db, recorded) -> dict:
    """From the web gate, once a delivery is recorded: start its fetch if it is new; a failed one sent again is
    tried again (a new generation). With Redis down it stays recorded and the reconciler starts it."""
    delivery = recorded.delivery
    if not recorded.created:
        with writing(db):  # read and bump under one lock: two redeliveries at once retry it once
            delivery = get_delivery(db, delivery["id"])
            if delivery["state"] != DeliveryState.FAILED:
                return delivery
            delivery = update_delivery(db, delivery["id"], DeliveryState.RECEIVED, attempts=0,
                                       generation=(delivery["generation"] or 0) + 1)
    dispatcher(settings).hand_off(*fetch_job(delivery["id"], delivery["generation"] or 0))
    return delivery


def run_worker_child(settings: Settings) -> None:
    """`gate worker --embedded` (gate.pipeline.embedded's child): run jobs in this process's job thread, taking them
    as JSON lines from standard input until it closes. Pending uploads and deliveries are picked up from the record
    first, so nothing a dead predecessor held is lost."""
    dispatcher = Dispatcher(settings)
    log.info("scan worker process %d ready", os.getpid())
    for line in sys.stdin:
        try:
            job = json.loads(line)
            dispatcher.queues.enqueue(job["queue"], job["func"], *job["args"], job_id=job["job_id"],
                                      retry=job.get("retry", True))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring a malformed job line (%s): %.200s", exc, line)
    log.info("scan worker process %d: input closed, exiting", os.getpid())
    logging.shutdown()
    # At once: what the job thread held is still pending in the record, which the next worker resumes; a normal
    # exit would run torch's C++ destructors under a live job thread ("terminate called without an active
    # exception").
    os._exit(0)
