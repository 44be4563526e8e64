"""Benchmark: uploads under faults. A stream of signed uploads goes to a real deployment on loopback (a private
redis-server without persistence, `gate serve`, one `gate worker`), and one fault is injected per scenario:

- worker: kill -9 of the worker while a probe job is in its hands;
- redis: kill -9 of Redis (restarted empty: every queued job is gone);
- web: kill -9 of `gate serve` while uploads stream in.

A supervisor thread restarts whatever was killed after --restart-delay seconds, as systemd's Restart=always or a
container runtime would; nobody touches the gate's state by hand. The hub side retries a delivery whose
connection failed, as hubs do. For each scenario it prints: accepted (202s), decided (a final state), stuck (no
final state --settle seconds after the last fault), lost (accepted, unknown to the record), decided twice (two
`upload.decided` callbacks with different message ids), and the recovery time: from the killed process answering
again to the first decision after it. Targets (issue 24): 0 lost, 0 stuck, 0 decided twice, recovery <= 30 s.

Uploads are variants of the fixture world's LoRAs (their metadata differs, so each has its own sha256).

    python -m benchmarks.faults [--uploads 10] [--scenarios worker,redis,web] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from safetensors.numpy import load_file, save_file

from benchmarks.loopback import answers, free_port, wait_until
from gate.hubs.client import deliver

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / "fixtures" / "world"
SECRET = "faults-secret"


def variants(count: int, into: Path) -> list[Path]:
    """`count` distinct uploads: the world's LoRAs in turn, each with its own metadata (so its own sha256)."""
    sources = sorted((WORLD / "loras").glob("*.safetensors"))
    made = []
    for i in range(count):
        source = sources[i % len(sources)]
        path = into / f"{source.stem}-v{i}.safetensors"
        from safetensors import safe_open

        with safe_open(source, "np") as opened:
            metadata = dict(opened.metadata() or {})
        save_file(load_file(source), path, metadata={**metadata, "benchmark_variant": str(i)})
        made.append(path)
    return made


class Callbacks(ThreadingHTTPServer):
    """The hub's callback endpoint: `upload.decided` message ids per upload."""

    def __init__(self):
        self.decided: dict[str, set[int]] = defaultdict(set)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if message["event"] == "upload.decided":
                    owner.decided[message["upload_id"]].add(message["id"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/callbacks"


class Deployment:
    """Redis, the web gate and a worker, each restarted by a supervisor thread when it dies."""

    def __init__(self, workdir: Path, restart_delay: float):
        self.workdir, self.restart_delay = workdir, restart_delay
        self.redis_port, self.web_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.callbacks = Callbacks()
        self.env = {**os.environ, "GATE_PROFILE": "demo", "GATE_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "REDIS_URL": "", "GATE_DATA_DIR": str(workdir / "data"), "GATE_UPLOAD_SECRET": SECRET,
                    "GATE_CALLBACK_URL": self.callbacks.url}
        self.commands = {
            "redis": ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(workdir)],
            "web": [sys.executable, "-m", "gate", "serve", "--port", str(self.web_port)],
            "worker": [sys.executable, "-m", "gate", "worker"],
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = defaultdict(int)
        self.restarted: dict[str, float] = {}
        self.stopping = False
        for name in self.commands:
            self._start(name)
        self.wait_up("redis", 30)
        self.wait_up("web", 60)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _start(self, name: str) -> None:
        log = open(self.workdir / f"{name}.log", "a")
        self.starts[name] += 1
        self.processes[name] = subprocess.Popen(self.commands[name], cwd=REPO, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT)

    def _supervise(self) -> None:
        while not self.stopping:
            for name, process in list(self.processes.items()):
                if process.poll() is not None and not self.stopping:
                    time.sleep(self.restart_delay)
                    self._start(name)
                    self.restarted[name] = time.time()
            time.sleep(0.1)

    def answers(self, name: str) -> bool:
        if name == "redis":
            done = subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"], capture_output=True, text=True)
            return done.stdout.strip() == "PONG"
        if name == "web":
            return answers(f"{self.base}/healthz")
        # Each start logs "worker <name> listening on <queues>" once it takes jobs.
        return (self.workdir / "worker.log").read_text().count(" listening on ") >= self.starts["worker"]

    def wait_up(self, name: str, timeout: float) -> None:
        wait_until(lambda: self.answers(name), timeout, f"{name} did not answer")

    def kill(self, name: str) -> float:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(timeout=10)
        return time.time()

    def status(self, upload_id: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.base}/v1/uploads/{upload_id}", timeout=5) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return None if error.code == 404 else {"state": "unknown"}

    def stop(self) -> None:
        self.stopping = True
        self.callbacks.shutdown()
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


FINAL = ("decided", "refused", "failed")


def deliver_retrying(url: str, path: Path, model_id: str, timeout: float = 90) -> dict | None:
    """A hub's delivery: retried while the gate does not answer (a connection refused, reset or a 5xx)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, answer = deliver(url, path, SECRET, {"hub": "bench", "model_id": model_id, "version_id": "1",
                                                         "uploader": "u1"}, timeout=30)
            if status == 202:
                return answer
            if status < 500:
                return None
        except (OSError, ValueError):
            pass
        time.sleep(1)
    return None


def scenario(name: str, files: list[Path], args, workdir: Path) -> dict:
    deployment = Deployment(workdir, args.restart_delay)
    accepted: dict[str, float] = {}
    fault = {"at": None, "back": None}
    try:
        deployment.wait_up("worker", 60)
        stream_done = threading.Event()

        def stream():
            for i, path in enumerate(files):
                answer = deliver_retrying(f"{deployment.base}/v1/uploads", path, f"{name}-{i}")
                if answer:
                    accepted[answer["id"]] = time.time()
                time.sleep(args.interval)
            stream_done.set()

        threading.Thread(target=stream, daemon=True).start()
        victim = {"worker": "worker", "redis": "redis", "web": "web"}[name]
        if name == "worker":  # with a probe job in its hands
            log = workdir / "worker.log"
            wait_until(lambda: "probes.jobs.probe_upload(" in log.read_text(), 300, "no probe job started")
        else:
            wait_until(lambda: len(accepted) >= max(1, len(files) // 3), 300, "the stream did not start")
        fault["at"] = deployment.kill(victim)
        wait_until(lambda: deployment.restarted.get(victim, 0) >= fault["at"], 60, f"{victim} was not restarted")
        deployment.wait_up(victim, 120)
        fault["back"] = time.time()
        stream_done.wait(600)
        deadline = time.time() + args.settle
        states: dict[str, dict | None] = {}
        while time.time() < deadline:
            states = {upload_id: deployment.status(upload_id) for upload_id in accepted}
            if all(state and state["state"] in FINAL for state in states.values()):
                break
            time.sleep(1)
        decided_at = {upload_id: _decided_at(state) for upload_id, state in states.items() if state}
        after = [at for at in decided_at.values() if at and at >= fault["back"]]
        return {
            "scenario": name, "sent": len(files), "accepted": len(accepted),
            "decided": sum(1 for state in states.values() if state and state["state"] in FINAL),
            "stuck": sum(1 for state in states.values() if state and state["state"] not in FINAL),
            "lost": sum(1 for state in states.values() if state is None),
            "decided_twice": sum(1 for upload_id in accepted if len(deployment.callbacks.decided[upload_id]) > 1),
            "recovery_s": round(min(after) - fault["back"], 1) if after else None,
            "restart_s": round(fault["back"] - fault["at"], 1),
        }
    finally:
        deployment.stop()


def _decided_at(state: dict) -> float | None:
    stamp = state.get("decided_at") or (state.get("decision") or {}).get("decided_at")
    if not stamp:
        return None
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=10, help="uploads streamed per scenario")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between uploads")
    parser.add_argument("--scenarios", default="worker,redis,web")
    parser.add_argument("--restart-delay", type=float, default=1.0, help="the supervisor's restart delay, s")
    parser.add_argument("--settle", type=float, default=300, help="seconds allowed for every upload to be decided")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="gate-faults-") as tmp:
        files = variants(args.uploads, Path(tmp))
        for name in args.scenarios.split(","):
            workdir = Path(tmp) / name
            workdir.mkdir()
            results.append(scenario(name, files, args, workdir))
            print(json.dumps(results[-1]), file=sys.stderr)
            shutil.rmtree(workdir / "data", ignore_errors=True)
    print(f"\nuploads under faults, {datetime.date.today()}, {os.cpu_count()} cores, {args.uploads} uploads a scenario "
          f"one every {args.interval:g} s, supervisor restart delay {args.restart_delay:g} s\n")
    print("| fault (kill -9) | accepted | decided | stuck | lost | decided twice | back up after, s "
          "| recovery (back up to first decision), s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        print(f"| {row['scenario']} | {row['accepted']}/{row['sent']} | {row['decided']} | {row['stuck']} "
              f"| {row['lost']} | {row['decided_twice']} | {row['restart_s']} | {row['recovery_s']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
