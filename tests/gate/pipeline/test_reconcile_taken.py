"""A worker killed after taking a job from its queue and before starting it (RQ moves the job to an intermediate
list first) leaves the job "queued" out of line: the reconciler takes it for lost once it stays so, and restarts
the scan, rather than waiting on it until RQ's maintenance some minutes later. Real Redis, real RQ queues."""

from __future__ import annotations

import time

from gate.pipeline import reconcile as module
from gate.pipeline.reconcile import job_alive, reconcile, worker_alive
from gate.pipeline.start import start_scan
from gate.queues import RedisQueues, job_id
from gate.record.db import open_db
from gate.record.uploads import get_upload, record_upload
from tests.support import RedisServer, needs_redis


def _taken(queues: RedisQueues, job: str) -> None:
    """What an RQ worker does when it takes a job (Queue.dequeue_any): the id moved from the line to its
    intermediate list, the status left "queued" until the worker starts it."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    queue = queues.queue(Job.fetch(job, connection=queues.connection, serializer=JSONSerializer).origin)
    assert queues.connection.lmove(queue.key, queue.intermediate_queue_key) == job.encode()


@needs_redis
def test_a_job_taken_and_never_started_is_lost_after_a_while_and_its_scan_restarted(tmp_path, monkeypatch):
    monkeypatch.setattr(module, "TAKEN_SECONDS", 0.5)
    server = RedisServer(tmp_path)
    server.start()
    try:
        queues = RedisQueues(server.url)
        db = open_db(tmp_path / "gate.db")
        lora = tmp_path / "a.safetensors"
        lora.write_bytes(b"not read here")
        upload = record_upload(db, "direct", {"model_id": "m"}, lora, "ab" * 32, 13, "a.safetensors").upload
        start_scan(queues, upload["id"])
        db["uploads"].update(upload["id"], {"updated_at": "2026-01-01T00:00:00.000+00:00"})  # past its grace
        first = job_id(upload["id"], 0, "intake")
        alive = worker_alive(queues)
        assert job_alive(queues, first, alive) and first not in queues.taken()  # waiting in line
        _taken(queues, first)
        assert first in queues.taken() and queues.job_status(first)[0] == "queued"
        assert reconcile(db, queues) == []  # just taken: a live worker starts it within moments
        time.sleep(0.6)
        assert reconcile(db, queues) == [upload["id"]]  # still not started: its worker died in between
        restarted = get_upload(db, upload["id"])
        assert restarted["generation"] == 1 and queues.job_status(job_id(upload["id"], 1, "intake"))[0] == "queued"
        assert reconcile(db, queues) == []  # the new run waits in line
    finally:
        server.stop()
