"""The service on RQ, end to end with real parts: a real Redis server, real `gate serve` and `gate worker`
processes, real HTTP, a hub's callback endpoint as a real HTTP server, and fixture-world LoRAs.

Each test gets its own redis-server on a free port, so stopping it (the fault tests) disturbs nobody."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, world_lora
from tests.support import deliver_upload, final_state, loaded_torch, needs_redis, status, wait, without_torch

pytestmark = needs_redis


def test_a_delivery_reaches_a_verdict_through_rq_workers_and_the_hub_is_called_back(service, world, tmp_path):
    # Two workers as a deployment splits them: one for the record's side, one that only renders. The renderer
    # gets a data directory of its own, to show that it never opens the record.
    # The record's worker runs where torch cannot even be imported, as `pip install lora-gate` leaves it.
    record_worker = service.spawn("worker", "--queues", "intake,catalogue", log="worker-intake",
                                  extra_env=without_torch(tmp_path))
    probe_worker = service.spawn("worker", "--queues", "probe", log="worker-probe",
                                 extra_env={"GATE_DATA_DIR": str(tmp_path / "probe-worker")})
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    answer = deliver_upload(service, world.path(lora["path"]), "m-rq-1")
    final = final_state(answer["status_url"], service)
    assert final["state"] == "decided", final
    assert final["verdict"] in ("allow", "quarantine", "block")
    assert any(r["character"] == lora["character"] for r in final["reasons"])  # its honest title names it
    assert final["probe_set"], "it was rendered by the probe worker"
    assert not (tmp_path / "probe-worker" / "gate.db").exists()
    # The seam, in the running processes: the record's worker concluded the scan without torch.
    assert not loaded_torch(record_worker.pid) and loaded_torch(probe_worker.pid)
    assert not loaded_torch(service.web.pid)
    wait(lambda: service.hub.received, 30, "the hub was not called back")
    callback = service.hub.received[0]
    assert callback["upload_id"] == answer["id"] and callback["event"] == "upload.decided"
    assert callback["data"]["verdict"] == final["verdict"]
    metrics = urllib.request.urlopen(f"{service.base}/metrics").read().decode()
    assert 'gate_queue_depth{queue="probe"} 0' in metrics and "gate_probe_seconds_count 1" in metrics
    report = subprocess.run([sys.executable, "-m", "gate", "status", answer["id"]], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "GATE_DATA_DIR": str(tmp_path / "data")})
    assert "scan started" in report.stdout and f"decided {final['verdict']}" in report.stdout


def test_a_refused_file_is_decided_on_the_intake_queue_alone(service, corpus_dir):
    service.spawn("worker", "--queues", "intake", log="worker-intake")  # no probe worker at all
    answer = deliver_upload(service, corpus_dir / "pickle_disguised.safetensors", "m-pickle")
    final = final_state(answer["status_url"], service, timeout=60)
    assert final["state"] == "refused" and final["error"]["code"] == "format_pickle"


def test_a_worker_killed_mid_job_loses_nothing(service, world):
    victim = service.spawn("worker", log="worker-victim")
    lora = world_lora(world, kind="style")
    answer = deliver_upload(service, world.path(lora["path"]), "m-kill")
    wait(lambda: status(answer["status_url"])["state"] == "scanning", 120, "the scan never started")
    # Killed while its probe job runs (a job in hand), not between two jobs, where nothing would be lost to show.
    log, probing = service.logs / "worker-victim.log", "probes.jobs.probe_upload("
    wait(lambda: any(probing in line and f"({answer['id']}-g0-probe)" in line
                      for line in log.read_text().splitlines()), 120, "the probe job never started")
    assert "Successfully completed probes.jobs.probe_upload" not in log.read_text()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    service.spawn("worker", log="worker-rescuer")
    final = final_state(answer["status_url"], service)
    assert final["state"] == "decided", final
    journal = subprocess.run([sys.executable, "-m", "gate", "status", answer["id"], "--json"], cwd=REPO,
                             capture_output=True, text=True,
                             env={**os.environ, "GATE_DATA_DIR": str(service.logs / "data")})
    report = json.loads(journal.stdout)
    assert report["generation"] >= 1 and any("scan restarted" in line for line in report["journal"])


def test_deliveries_while_redis_is_down_are_recorded_and_scanned_when_it_is_back(service, corpus_dir):
    service.redis.stop()
    answer = deliver_upload(service, corpus_dir / "empty.safetensors", "m-redis-down")  # still 202: recorded
    assert status(answer["status_url"])["state"] == "received"
    ready = urllib.request.Request(f"{service.base}/readyz")
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(ready, timeout=10)
    assert not_ready.value.code == 503
    service.redis.start()  # empty: no persistence, whatever was queued is gone
    service.spawn("worker", "--queues", "intake", log="worker-after")
    final = final_state(answer["status_url"], service, timeout=120)
    assert final["state"] in ("refused", "decided"), final


def test_a_hub_that_is_down_gets_its_decision_later(service, corpus_dir):
    service.hub.refuse = True
    service.spawn("worker", "--queues", "intake", log="worker-intake")
    answer = deliver_upload(service, corpus_dir / "pickle_disguised.safetensors", "m-hub-down")
    final_state(answer["status_url"], service, timeout=60)
    time.sleep(6)  # at least one refused attempt
    assert service.hub.received == []
    service.hub.refuse = False
    wait(lambda: service.hub.received, 60, "the decision was never delivered")
    assert service.hub.received[0]["upload_id"] == answer["id"]
    assert service.hub.received[0]["data"]["error"]["code"] == "format_pickle"


def test_a_hub_that_answers_slowly_never_lets_a_workers_heartbeat_lapse(service, corpus_dir):
    """Callbacks go out on the housekeeping thread, not the heartbeat's: callbacks to a hub that times out take
    longer, together, than the liveness key lives, and must not make the worker look dead (the reconciler would
    restart its scans)."""
    import redis

    from gate.hubs.callbacks import TIMEOUT_SECONDS
    from gate.pipeline.reconcile import ALIVE_KEY
    from gate.pipeline.worker import ALIVE_TTL_SECONDS

    service.hub.delay = TIMEOUT_SECONDS + 1  # every callback times out
    service.spawn("worker", "--queues", "intake", "--name", "slow-hub-worker", log="worker-slow-hub")
    count = ALIVE_TTL_SECONDS // TIMEOUT_SECONDS + 1  # one round of them outlasts the key
    pickle = corpus_dir / "pickle_disguised.safetensors"
    answers = [deliver_upload(service, pickle, f"m-slow-hub-{i}") for i in range(count)]
    for answer in answers:
        final_state(answer["status_url"], service, timeout=60)
    wait(lambda: service.hub.requests, 30, "no callback was sent")
    connection = redis.Redis.from_url(service.redis.url)
    for _ in range(2 * ALIVE_TTL_SECONDS):  # while the hub holds the callbacks
        assert connection.exists(ALIVE_KEY.format("slow-hub-worker")), "the worker's liveness key lapsed"
        time.sleep(1)
    assert service.hub.requests >= count
    service.hub.delay = 0
    wait(lambda: len(service.hub.received) >= count, 120, "the hub never got its decisions")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_worker_rides_out_a_redis_outage_and_forks_nothing(service, corpus_dir):
    """Redis killed with -9 and restarted empty: the worker waits for it, carries on, and the upload sent after
    is decided with no one restarting anything. It never forks (RQ's scheduler runs on a thread of it), so a
    worker killed with -9 leaves nothing behind; SIGTERM still ends it cleanly."""
    worker = service.spawn("worker", "--queues", "intake", log="worker-outage")
    before = deliver_upload(service, corpus_dir / "pickle_disguised.safetensors", "m-before-outage")
    assert final_state(before["status_url"], service, timeout=60)["state"] == "refused"
    assert _children(worker.pid) == []
    service.redis.process.kill()
    service.redis.process.wait(timeout=10)
    time.sleep(4)  # long enough for RQ's worker loop to have lost Redis
    assert worker.poll() is None, "the worker died with Redis"
    service.redis.start()  # empty: no persistence
    after = deliver_upload(service, corpus_dir / "empty.safetensors", "m-after-outage")
    assert final_state(after["status_url"], service, timeout=90)["state"] == "refused"
    assert worker.poll() is None and _children(worker.pid) == []
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0


def test_redis_killed_while_a_job_runs_the_worker_carries_on_and_the_upload_is_decided(service, world):
    """Redis dies mid-probe: the job cannot hand on its result and RQ's loop quits; the worker waits for Redis,
    starts again, and its reconciler restarts the lost scan, which is decided, with no hand restarts."""
    worker = service.spawn("worker", log="worker-mid-job")  # all queues: the record's side and the probes
    lora = world_lora(world, kind="style")
    answer = deliver_upload(service, world.path(lora["path"]), "m-redis-mid-job")
    log, probing = service.logs / "worker-mid-job.log", "probes.jobs.probe_upload("
    wait(lambda: probing in log.read_text(), 120, "the probe job never started")
    service.redis.process.kill()
    service.redis.process.wait(timeout=10)
    time.sleep(3)
    service.redis.start()
    final = final_state(answer["status_url"], service, timeout=300)
    assert final["state"] == "decided", final
    assert worker.poll() is None, "the worker died with Redis"


def test_a_training_set_is_screened_by_rq_workers_and_the_hub_is_called_back(service, tmp_path):
    """The record's worker (no torch) reads and judges the set; a probe worker with a data directory of its own
    embeds the images from the set's archive; the hub hears the verdict."""
    import zipfile

    from fixtures import image_truth
    from gate.hubs.client import deliver
    from tests.support import SECRET

    service.spawn("worker", "--queues", "intake", log="worker-intake", extra_env=without_torch(tmp_path))
    service.spawn("worker", "--queues", "probe", log="worker-probe",
                  extra_env={"GATE_DATA_DIR": str(tmp_path / "probe-worker")})
    entries = image_truth.load(split="held_back")
    files = [e["path"] for e in entries if e["character"] == "pikachu"][:8] + \
        [e["path"] for e in entries if e["kind"] == "generic"][:24]
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in files:
            out.write(file, file.name)
    code, answer = deliver(f"{service.base}/v1/datasets", archive, SECRET, {"hub": "h", "model_id": "rq-set"})
    assert code in (200, 202), answer
    wait(lambda: status(answer["status_url"])["state"] == "decided", 180, "the set was never decided")
    final = status(answer["status_url"])
    assert final["counts"]["images"] == 32 and final["counts"]["embedded"] == 32
    assert any(r.get("character") == "pikachu" for r in final["reasons"]), final["reasons"]
    assert not (tmp_path / "probe-worker" / "gate.db").exists()  # the probe worker never opened the record
    wait(lambda: any(m["event"] == "images.decided" for m in service.hub.received), 90, "no callback")
    [message] = [m for m in service.hub.received if m["event"] == "images.decided"]
    assert message["upload_id"] == answer["id"] and message["data"]["verdict"] == final["verdict"]


def test_a_probe_worker_that_cannot_get_the_references_fails_the_scan_rather_than_decide_on_less(service, world,
                                                                                                 tmp_path):
    """No shared disk and no way to fetch (the gate has no public URL or worker token): the probe job fails,
    is retried, and the upload is failed with the reason; it is never decided on the renders alone."""
    service.spawn("worker", "--queues", "intake", log="worker-intake", extra_env=without_torch(tmp_path))
    service.spawn("worker", "--queues", "probe", log="worker-remote", extra_env={
        "GATE_DATA_DIR": str(tmp_path / "remote"), "GATE_CACHE_DIR": str(tmp_path / "remote-cache"),
        "GATE_WORKER_SHARED_DISK": "0"})
    lora = world_lora(world, kind="character", trigger=None, metadata_style="stripped")
    answer = deliver_upload(service, world.path(lora["path"]), "m-no-evidence")
    final = final_state(answer["status_url"], service)
    assert final["state"] == "failed" and final["verdict"] is None, final
    assert final["error"]["code"] == "probe_request_failed" and "GATE_PUBLIC_URL" in final["error"]["message"]
