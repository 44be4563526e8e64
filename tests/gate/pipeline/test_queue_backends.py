"""One contract for every kind of queue the gate uses: RQ on Redis (run by a real RQ worker), the embedded
worker's in-process queues, and the inline queues of local commands. A producer calls `enqueue` and
`enqueue_many` and reads `depth` and `health`, whatever is behind them; each job runs once, with its arguments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gate.config import load_settings
from gate.queues import CATALOGUE, INTAKE, QUEUES, InlineQueues, InProcessQueues, RedisQueues, wait_for
from tests.support import RedisServer


@pytest.fixture(params=["redis", "in-process", "inline"])
def backend(request, tmp_path):
    """(queues, run): `run()` makes whatever is behind the queues run what was enqueued."""
    settings = load_settings({"data_dir": str(tmp_path)})
    if request.param == "in-process":
        yield InProcessQueues(settings), lambda: None
    elif request.param == "inline":
        yield InlineQueues(settings), lambda: None
    else:
        if shutil.which("redis-server") is None:
            pytest.skip("needs the redis-server binary")
        from rq import SimpleWorker
        from rq.serializers import JSONSerializer

        from gate.pipeline.worker import unsubscribe_bounded

        server = RedisServer(tmp_path)
        server.start()
        queues = RedisQueues(server.url)

        class Worker(SimpleWorker):
            unsubscribe = unsubscribe_bounded  # as `gate worker` does: a burst's end never waits out a 60 s read

        def run() -> None:  # a real RQ worker, in burst mode, on every queue
            Worker([queues.queue(q) for q in QUEUES], connection=queues.connection,
                   serializer=JSONSerializer).work(burst=True, with_scheduler=False)

        try:
            yield queues, run
        finally:
            server.stop()


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_every_backend_runs_each_job_once_with_its_arguments(backend, tmp_path):
    queues, run = backend
    calls = tmp_path / "calls.txt"
    queues.enqueue(INTAKE, "tests.support.record_call", str(calls), "single", job_id="job-single")
    queues.enqueue_many([(CATALOGUE, "tests.support.record_call", (str(calls), f"batch-{n}"), f"job-batch-{n}")
                         for n in range(3)])
    run()
    assert wait_for(lambda: len(_calls(calls)) == 4, timeout=20)
    assert sorted(_calls(calls)) == ["batch-0", "batch-1", "batch-2", "single"]


def test_every_backend_reports_depth_and_health(backend):
    queues, _ = backend
    assert set(queues.depth()) == set(QUEUES)
    assert queues.health() == "ok"


def test_in_process_queues_take_a_pending_job_id_once(tmp_path):
    """As RQ's job ids are keys, a job id already queued (or running, or waiting to retry) is one job: a restarted
    worker process resumes the record's pending uploads while the web gate's hand-off of the newest arrives too.
    Once the job has finished, the id may run again."""
    queues = InProcessQueues(load_settings({"data_dir": str(tmp_path)}))
    calls, release = tmp_path / "calls.txt", tmp_path / "release"
    queues.enqueue(INTAKE, "tests.support.wait_for_file", str(release), job_id="busy")  # holds the job thread
    queues.enqueue(INTAKE, "tests.support.record_call", str(calls), "first", job_id="scan-1")
    queues.enqueue(INTAKE, "tests.support.record_call", str(calls), "again while queued", job_id="scan-1")
    release.touch()
    assert wait_for(lambda: queues.result("scan-1") == "first", timeout=20)
    assert _calls(calls) == ["first"]
    queues.enqueue(INTAKE, "tests.support.record_call", str(calls), "after it finished", job_id="scan-1")
    assert wait_for(lambda: _calls(calls) == ["first", "after it finished"], timeout=20)
