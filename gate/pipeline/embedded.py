"""The embedded default's worker process: without Redis, `gate serve` runs scans in a child process it supervises,
so the web process never loads torch and a crash or abort in rendering cannot take the web gate down.

The web process hands jobs over as JSON lines on the child's standard input (names and ids, nothing pickled).
The record is the source of truth: a child that starts (the first time, or after it died mid-scan) picks up every
upload and delivery the record holds as not yet finished, so a job that died with a child is never lost. The child
ends when its input closes: when the web process exits, however it exits.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time

from gate.queues import QUEUES, Queues

log = logging.getLogger(__name__)
RESTART_DELAYS = (0.5, 1, 2, 5, 10)  # seconds before restarting a child that keeps dying


class WorkerProcess(Queues):
    """A supervised child process (`gate worker --embedded`) running every queue's jobs, as the web gate's queues."""

    COMMAND = (sys.executable, "-m", "gate", "worker", "--embedded")

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        """Start the child and a thread that restarts it whenever it dies."""
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="gate-worker-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self) -> None:
        with self._lock:
            self.process = subprocess.Popen(self.COMMAND, stdin=subprocess.PIPE, text=True)
        log.info("scan worker process %d started", self.process.pid)

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self.process.wait()
            if self._stopping.is_set():
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.warning("scan worker process %d exited with %s; restarting in %.1f s", self.process.pid, code, delay)
            if self._stopping.wait(delay):
                return
            self._spawn()

    def enqueue(self, queue_name: str, func: str, *args, job_id: str, retry: bool = True) -> None:
        line = json.dumps({"queue": queue_name, "func": func, "args": list(args), "job_id": job_id, "retry": retry})
        with self._lock:
            try:
                self.process.stdin.write(line + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:  # the child died; its successor resumes the record
                log.warning("scan worker unavailable (%s); %s waits for the restarted worker", exc, job_id)

    def depth(self) -> dict[str, int]:
        return dict.fromkeys(QUEUES, 0)  # the child's queue is its own; the record says what waits

    def health(self) -> str:
        alive = self.process is not None and self.process.poll() is None
        return "ok" if alive else "scan worker process restarting"

    def stop(self, timeout: float = 10) -> None:
        """End the child: its input closes (it stops taking jobs), then SIGTERM, then SIGKILL."""
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout / 2)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                self.process.kill()


_worker: WorkerProcess | None = None


def use_worker_process(worker: WorkerProcess | None) -> None:
    """Make this process's dispatcher hand jobs to `worker` (set by `gate serve` without Redis)."""
    global _worker
    _worker = worker


def worker_process() -> WorkerProcess | None:
    return _worker
