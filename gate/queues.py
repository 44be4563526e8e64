"""Job queues: RQ on Redis when REDIS_URL is set, else one in-process background thread (the embedded default).

Both carry the same jobs, named by dotted path with JSON arguments (RQ's JSON serializer: nothing is ever
pickled), so the web process needs none of the worker's imports. Three queues, listened to in priority order:
`intake` (CPU: intake, matching, decisions), `probe` (GPU: rendering) and `catalogue` (low priority).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from gate.config import Settings

log = logging.getLogger(__name__)

INTAKE, PROBE, CATALOGUE, CATALOGUE_PROBE = "intake", "probe", "catalogue", "catalogue_probe"
# Priority order: live uploads before the back catalogue. The record's workers (CPU) take intake and catalogue,
# the probe workers (GPU) probe and catalogue_probe.
QUEUES = (INTAKE, PROBE, CATALOGUE, CATALOGUE_PROBE)
RECORD_QUEUES, PROBE_QUEUES = (INTAKE, CATALOGUE), (PROBE, CATALOGUE_PROBE)
RETRY_INTERVALS = (5, 30)  # seconds before the second and third attempts
FAILURE_CALLBACK = "gate.pipeline.jobs.job_failed"


def job_id(upload_id: str, generation: int, step: str) -> str:
    """A scan job's id (RQ allows letters, digits, '_' and '-'): one per upload, generation and step."""
    return f"{upload_id}-g{generation}-{step}"


def parse_job_id(value: str) -> tuple[str, int, str]:
    """(upload id, generation, step) of a scan job's id; ValueError for any other job."""
    upload_id, generation, step = value.rsplit("-", 2)
    return upload_id, int(generation.lstrip("g")), step


def resolve(path: str) -> Callable:
    """The function a dotted path names."""
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)


@dataclass
class Context:
    """What a running job may use: the settings and the queues to hand the next step to."""

    settings: Settings
    queues: Queues


_process_context: Context | None = None
_thread_context = threading.local()


def set_context(context: Context, thread_only: bool = False) -> None:
    global _process_context
    if thread_only:
        _thread_context.value = context
    else:
        _process_context = context


def context() -> Context:
    """The running job's context (set by the worker that runs it)."""
    found = getattr(_thread_context, "value", None) or _process_context
    if found is None:
        raise RuntimeError("no job context: jobs run inside `gate worker` or the in-process dispatcher")
    return found


class Queues:
    """Where jobs go; `enqueue` is all a producer needs."""

    def enqueue(self, queue_name: str, func: str, *args, job_id: str, retry: bool = True) -> None:
        raise NotImplementedError

    def enqueue_many(self, jobs: list[tuple[str, str, tuple, str]]) -> None:
        """Enqueue (queue, func, args, job id) entries; RedisQueues does it in one round trip."""
        for queue_name, func, args, job_id in jobs:
            self.enqueue(queue_name, func, *args, job_id=job_id)

    def depth(self) -> dict[str, int]:
        raise NotImplementedError

    def health(self) -> str:
        raise NotImplementedError


class RedisQueues(Queues):
    """RQ queues on a Redis server."""

    def __init__(self, redis_url: str, job_timeout: int = 1800, blocking: bool = False):
        from redis import Redis

        # A worker blocks in BLPOP for minutes, so its socket must not time out; the web gate's must, quickly,
        # so that a Redis outage costs a delivery two seconds, not a hang (the upload is recorded regardless).
        self.connection = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=None if blocking else 5)
        self.job_timeout = job_timeout

    def queue(self, name: str):
        from rq import Queue
        from rq.serializers import JSONSerializer

        return Queue(name, connection=self.connection, serializer=JSONSerializer)

    def enqueue(self, queue_name: str, func: str, *args, job_id: str, retry: bool = True, pipeline=None) -> None:
        from rq import Callback, Retry

        # Probe jobs retry at once: spaced retries need RQ's scheduler, a forked process, and a GPU worker runs
        # none (no fork after CUDA is initialised).
        intervals = [0] * len(RETRY_INTERVALS) if queue_name == PROBE else list(RETRY_INTERVALS)
        self.queue(queue_name).enqueue_call(
            func, args, job_id=job_id, timeout=self.job_timeout, result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
            retry=Retry(max=len(RETRY_INTERVALS), interval=intervals) if retry else None,
            on_failure=Callback(FAILURE_CALLBACK), pipeline=pipeline,
        )

    def enqueue_many(self, jobs: list[tuple[str, str, tuple, str]]) -> None:
        """Enqueue (queue, func, args, job id) entries in one Redis round trip."""
        with self.connection.pipeline() as pipeline:
            for queue_name, func, args, job_id in jobs:
                self.enqueue(queue_name, func, *args, job_id=job_id, pipeline=pipeline)
            pipeline.execute()

    def job_status(self, job_id: str) -> tuple[str | None, str | None]:
        """(status, worker name) of a job, (None, None) when Redis no longer knows it."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        from rq.serializers import JSONSerializer

        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None, None
        return job.get_status(refresh=False), job.worker_name

    def taken(self) -> set[str]:
        """Jobs a worker took from a queue and has not started: RQ moves a job from its queue to an intermediate
        list when a worker takes it, and it stays there, still "queued", until the worker starts it, or, if the
        worker died in between, until RQ's maintenance some minutes later. The lists are short (a job a worker)."""
        pipeline = self.connection.pipeline()
        for name in QUEUES:
            pipeline.lrange(self.queue(name).intermediate_queue_key, 0, -1)
        return {job.decode() if isinstance(job, bytes) else job for jobs in pipeline.execute() for job in jobs}

    def result(self, job_id: str):
        from rq.job import Job
        from rq.serializers import JSONSerializer

        return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer).return_value()

    def depth(self) -> dict[str, int]:
        return {name: self.queue(name).count for name in QUEUES}

    def health(self) -> str:
        try:
            self.connection.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means the queue is not reachable
            return f"redis unreachable: {exc}"
        return "ok"


class InProcessQueues(Queues):
    """One background thread running every queue's jobs in priority order, with the same retries as RQ."""

    def __init__(self, settings: Settings, on_idle: Callable[[], None] | None = None, idle_seconds: float = 2.0):
        self.settings = settings
        self.jobs: queue.PriorityQueue = queue.PriorityQueue()
        self.results: dict[str, object] = {}
        self._order = itertools.count()
        # Job ids queued, running or waiting to retry. As with RQ, whose job ids are keys, a job id is one job:
        # the same id again while it is pending is not a second job (a restarted worker process resumes the
        # record's pending uploads, and the web gate's hand-off of the newest may arrive as well).
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._on_idle, self._idle_seconds = on_idle, idle_seconds
        self._thread = threading.Thread(target=self._run, name="gate-worker", daemon=True)
        self._thread.start()

    def enqueue(self, queue_name: str, func: str, *args, job_id: str, retry: bool = True, attempt: int = 0) -> None:
        with self._pending_lock:
            if attempt == 0 and job_id in self._pending:
                log.info("job %s is already pending; not queued twice", job_id)
                return
            self._pending.add(job_id)
        self.jobs.put((QUEUES.index(queue_name), next(self._order), queue_name, func, args, job_id, retry, attempt))

    def result(self, job_id: str):
        return self.results.pop(job_id, None)

    def job_status(self, job_id: str) -> tuple[str | None, str | None]:
        return None, None  # jobs live only in this process; after a restart, nothing is running

    def depth(self) -> dict[str, int]:
        counts = dict.fromkeys(QUEUES, 0)
        for entry in list(self.jobs.queue):
            counts[entry[2]] += 1
        return counts

    def health(self) -> str:
        return "ok" if self._thread.is_alive() else "worker thread stopped"

    def _run(self) -> None:
        set_context(Context(self.settings, self), thread_only=True)
        while True:
            try:
                entry = self.jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                self._idle()
                continue
            _, _, queue_name, func, args, job_id, retry, attempt = entry
            try:
                value = resolve(func)(*args)
            except Exception as exc:  # noqa: BLE001 - a failed job is retried, then recorded as failed
                log.exception("job %s failed (attempt %d)", job_id, attempt + 1)
                if retry and attempt < len(RETRY_INTERVALS):
                    timer = threading.Timer(RETRY_INTERVALS[attempt], self.enqueue, [queue_name, func, *args],
                                            {"job_id": job_id, "retry": retry, "attempt": attempt + 1})
                    timer.daemon = True
                    timer.start()
                else:
                    self._finished(job_id)
                    resolve(FAILURE_CALLBACK)(_FinishedJob(job_id, func, args), None, type(exc), exc, None)
            else:
                self._finished(job_id)  # before its result shows: whoever reads it may queue the id again
                self.results[job_id] = value
            self._idle()

    def _finished(self, job_id: str) -> None:
        with self._pending_lock:
            self._pending.discard(job_id)

    def _idle(self) -> None:
        if self._on_idle is not None:
            try:
                self._on_idle()
            except Exception:  # noqa: BLE001 - housekeeping must never stop the worker
                log.exception("housekeeping failed")


@dataclass
class _FinishedJob:
    """The parts of an RQ job the failure callback reads, for jobs that ran in-process."""

    id: str
    func_name: str
    args: tuple
    retries_left: int = 0


class InlineQueues(Queues):
    """Every job run at once, in the caller's thread, a job's own jobs inside it: an operator's local command
    without Redis (`gate rescan`, `gate catalogue import`) runs a whole chain this way. A failure is raised to
    the caller; nothing is retried."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def enqueue(self, queue_name: str, func: str, *args, job_id: str, retry: bool = True) -> None:
        if queue_name not in QUEUES:
            raise ValueError(f"no queue {queue_name!r}")
        resolve(func)(*args)

    def job_status(self, job_id: str) -> tuple[str | None, str | None]:
        return None, None

    def depth(self) -> dict[str, int]:
        return dict.fromkeys(QUEUES, 0)

    def health(self) -> str:
        return "ok"


def make_queues(settings: Settings, on_idle: Callable[[], None] | None = None) -> Queues:
    if settings.redis_url:
        return RedisQueues(settings.redis_url, settings.job_timeout)
    return InProcessQueues(settings, on_idle)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll until predicate() is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
