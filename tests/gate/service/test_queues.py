"""The service on RQ, end to end with real parts: a real Redis server, real `gate serve` and `gate worker`
processes, real HTTP, a hub's callback endpoint as a real HTTP server, and fixture-world LoRAs.

Each test gets its own redis-server on a free port, so stopping it (the fault tests) disturbs nobody."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gate.hubs import signatures
from gate.hubs.client import deliver
from tests.conftest import REPO, world_lora
from tests.gate.web.test_serve import _free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
SECRET = "rq-e2e-secret"


class RedisServer:
    """A throwaway redis-server without persistence: a restart loses every queued job, as in CI's Redis."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.process = _free_port(), workdir, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                                     text=True).stdout.strip() == "PONG", 20, "redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Hub(ThreadingHTTPServer):
    """The hub's callback endpoint: records every signed decision it is sent; can refuse for a while."""

    def __init__(self):
        self.received: list[dict] = []
        self.refuse = False
        self.delay, self.requests = 0.0, 0  # seconds before answering; requests seen
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hub.requests += 1
                time.sleep(hub.delay)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signatures.verify(self.headers.get("X-Gate-Signature"), body, SECRET)
                if hub.refuse:
                    self.send_response(503)
                else:
                    hub.received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/lora-gate/callback"


def _wait(predicate, timeout: float, message: str, interval: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(message)


@pytest.fixture
def service(tmp_path):
    """Redis, the gate (web) and a hub; tests start the workers they need."""
    redis = RedisServer(tmp_path)
    redis.start()
    hub = Hub()
    port = _free_port()
    env = {**os.environ, "REDIS_URL": redis.url, "GATE_DATA_DIR": str(tmp_path / "data"),
           "GATE_UPLOAD_SECRET": SECRET, "GATE_CALLBACK_URL": hub.url}
    processes: list[subprocess.Popen] = []

    def spawn(*args: str, log: str, extra_env: dict | None = None) -> subprocess.Popen:
        out = open(tmp_path / f"{log}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "gate", *args], cwd=REPO, env={**env, **(extra_env or {})},
                                   stdout=out, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    web = spawn("serve", "--port", str(port), log="serve")
    base = f"http://127.0.0.1:{port}"
    _wait(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, 60, "gate serve did not start")

    class Service:
        pass

    service = Service()
    service.base, service.redis, service.hub, service.spawn, service.web = base, redis, hub, spawn, web
    service.logs = tmp_path
    yield service
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    hub.shutdown()
    if redis.process.poll() is None:
        redis.stop()


NO_TORCH = """import sys

class NoTorch:
    # As if `pip install lora-gate` had left out the [probes] extra: torch and its stack cannot be imported.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "diffusers", "transformers", "peft", "accelerate"}:
            raise ModuleNotFoundError(f"No module named {name!r} (this worker is installed without [probes])")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def without_torch(tmp_path: Path) -> dict:
    """Environment for a process in which torch cannot be imported (a sitecustomize that refuses it)."""
    site = tmp_path / "no-torch-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TORCH)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def loaded_torch(pid: int) -> bool:
    """Whether a live process has torch's library mapped: read from outside, so nothing in it can hide it."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _status(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def _final(url: str, service, timeout: float = 300) -> dict:
    answer = {}

    def done() -> bool:
        answer.update(_status(url))
        return answer["state"] not in ("received", "scanning")

    try:
        _wait(done, timeout, "no final state")
    except AssertionError:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(service.logs.glob("*.log")))
        raise AssertionError(f"still {answer.get('state')} after {timeout}s\n{logs}") from None
    return answer


def _deliver(service, lora_path: Path, model_id: str) -> dict:
    status, answer = deliver(f"{service.base}/v1/uploads", lora_path, SECRET,
                             {"hub": "testhub", "model_id": model_id, "version_id": "1", "uploader": "u1"})
    assert status == 202, answer
    return answer


def test_a_delivery_reaches_a_verdict_through_rq_workers_and_the_hub_is_called_back(service, world, tmp_path):
    # Two workers as a deployment splits them: one for the record's side, one that only renders. The renderer
    # gets a data directory of its own, to show that it never opens the record.
    # The record's worker runs where torch cannot even be imported, as `pip install lora-gate` leaves it.
    record_worker = service.spawn("worker", "--queues", "intake,catalogue", log="worker-intake",
                                  extra_env=without_torch(tmp_path))
    probe_worker = service.spawn("worker", "--queues", "probe", log="worker-probe",
                                 extra_env={"GATE_DATA_DIR": str(tmp_path / "probe-worker")})
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    answer = _deliver(service, world.path(lora["path"]), "m-rq-1")
    final = _final(answer["status_url"], service)
    assert final["state"] == "decided", final
    assert final["verdict"] in ("allow", "quarantine", "block")
    assert any(r["character"] == lora["character"] for r in final["reasons"])  # its honest title names it
    assert final["probe_set"], "it was rendered by the probe worker"
    assert not (tmp_path / "probe-worker" / "gate.db").exists()
    # The seam, in the running processes: the record's worker concluded the scan without torch.
    assert not loaded_torch(record_worker.pid) and loaded_torch(probe_worker.pid)
    assert not loaded_torch(service.web.pid)
    _wait(lambda: service.hub.received, 30, "the hub was not called back")
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
    answer = _deliver(service, corpus_dir / "pickle_disguised.safetensors", "m-pickle")
    final = _final(answer["status_url"], service, timeout=60)
    assert final["state"] == "refused" and final["error"]["code"] == "format_pickle"


def test_a_worker_killed_mid_job_loses_nothing(service, world):
    victim = service.spawn("worker", log="worker-victim")
    lora = world_lora(world, kind="style")
    answer = _deliver(service, world.path(lora["path"]), "m-kill")
    _wait(lambda: _status(answer["status_url"])["state"] == "scanning", 120, "the scan never started")
    # Killed while its probe job runs (a job in hand), not between two jobs, where nothing would be lost to show.
    log, probing = service.logs / "worker-victim.log", "probes.jobs.probe_upload("
    _wait(lambda: any(probing in line and f"({answer['id']}-g0-probe)" in line
                      for line in log.read_text().splitlines()), 120, "the probe job never started")
    assert "Successfully completed probes.jobs.probe_upload" not in log.read_text()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    service.spawn("worker", log="worker-rescuer")
    final = _final(answer["status_url"], service)
    assert final["state"] == "decided", final
    journal = subprocess.run([sys.executable, "-m", "gate", "status", answer["id"], "--json"], cwd=REPO,
                             capture_output=True, text=True,
                             env={**os.environ, "GATE_DATA_DIR": str(service.logs / "data")})
    report = json.loads(journal.stdout)
    assert report["generation"] >= 1 and any("scan restarted" in line for line in report["journal"])


def test_deliveries_while_redis_is_down_are_recorded_and_scanned_when_it_is_back(service, corpus_dir):
    service.redis.stop()
    answer = _deliver(service, corpus_dir / "empty.safetensors", "m-redis-down")  # still 202: recorded
    assert _status(answer["status_url"])["state"] == "received"
    ready = urllib.request.Request(f"{service.base}/readyz")
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(ready, timeout=10)
    assert not_ready.value.code == 503
    service.redis.start()  # empty: no persistence, whatever was queued is gone
    service.spawn("worker", "--queues", "intake", log="worker-after")
    final = _final(answer["status_url"], service, timeout=120)
    assert final["state"] in ("refused", "decided"), final


def test_a_hub_that_is_down_gets_its_decision_later(service, corpus_dir):
    service.hub.refuse = True
    service.spawn("worker", "--queues", "intake", log="worker-intake")
    answer = _deliver(service, corpus_dir / "pickle_disguised.safetensors", "m-hub-down")
    _final(answer["status_url"], service, timeout=60)
    time.sleep(6)  # at least one refused attempt
    assert service.hub.received == []
    service.hub.refuse = False
    _wait(lambda: service.hub.received, 60, "the decision was never delivered")
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
    answers = [_deliver(service, corpus_dir / "pickle_disguised.safetensors", f"m-slow-hub-{i}") for i in range(count)]
    for answer in answers:
        _final(answer["status_url"], service, timeout=60)
    _wait(lambda: service.hub.requests, 30, "no callback was sent")
    connection = redis.Redis.from_url(service.redis.url)
    for _ in range(2 * ALIVE_TTL_SECONDS):  # while the hub holds the callbacks
        assert connection.exists(ALIVE_KEY.format("slow-hub-worker")), "the worker's liveness key lapsed"
        time.sleep(1)
    assert service.hub.requests >= count
    service.hub.delay = 0
    _wait(lambda: len(service.hub.received) >= count, 120, "the hub never got its decisions")
