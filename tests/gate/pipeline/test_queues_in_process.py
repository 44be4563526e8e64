"""The in-process queues (the embedded worker's): a batch of jobs runs like single ones."""

from __future__ import annotations

from gate.config import load_settings
from gate.queues import CATALOGUE, InProcessQueues, wait_for


def test_in_process_queues_take_a_batch(tmp_path):
    """Back-catalogue screening hands its uploads over as one batch, whichever queues the process has."""
    queues = InProcessQueues(load_settings({"data_dir": str(tmp_path)}))
    queues.enqueue_many([(CATALOGUE, "posixpath.basename", (f"dir/file-{n}",), f"job-{n}") for n in range(3)])
    results = {}

    def done() -> bool:
        for n in range(3):
            found = queues.result(f"job-{n}")
            if found is not None:
                results[n] = found
        return len(results) == 3

    assert wait_for(done, timeout=10)
    assert results == {n: f"file-{n}" for n in range(3)}
