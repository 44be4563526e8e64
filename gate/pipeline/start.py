"""The first job of each piece of work, by name: an upload's scan starts with its intake, a delivery with its
fetch. Producers (the web gate, the reconciler, imports) start work through here, needing none of the jobs'
imports: a job is named by dotted path and runs wherever a worker takes it.
"""

from __future__ import annotations

from gate.queues import INTAKE, Queues, job_id


def scan_job(upload_id: str, generation: int = 0) -> tuple[str, str, tuple, str]:
    """An accepted upload's first job (queue, function, arguments, job id): its intake."""
    return INTAKE, "gate.pipeline.jobs.intake_upload", (upload_id, generation), job_id(upload_id, generation, "intake")


def start_scan(queues: Queues, upload_id: str, generation: int = 0) -> None:
    """Hand an accepted upload to the queue: its intake job."""
    queue_name, func, args, job = scan_job(upload_id, generation)
    queues.enqueue(queue_name, func, *args, job_id=job)


def fetch_job_id(delivery_id: str, generation: int) -> str:
    """A delivery's fetch job id: `dl_<hex>-fetch_g<generation>`, which the scan jobs' failure callback does not
    take for its own."""
    return f"{delivery_id}-fetch_g{generation}"


def fetch_job(delivery_id: str, generation: int = 0) -> tuple[str, str, tuple, str]:
    """A recorded delivery's job (queue, function, arguments, job id): its fetch."""
    return (INTAKE, "gate.pipeline.ingest.fetch_delivery", (delivery_id, generation),
            fetch_job_id(delivery_id, generation))


def start_fetch(queues: Queues, delivery_id: str, generation: int = 0) -> None:
    """Hand a recorded delivery to the intake queue."""
    queue_name, func, args, job = fetch_job(delivery_id, generation)
    queues.enqueue(queue_name, func, *args, job_id=job)
