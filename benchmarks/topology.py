"""Benchmark: every fixture LoRA through the share-nothing topology (issue 27, item 2), one box as the baseline in
the same run.

- One box (the baseline): the in-process scanner on one record holding the world's registered characters, as
  `gate scan` runs it.
- The topology, on loopback: a private redis-server; `gate serve` with GATE_PUBLIC_URL and a worker token; a
  record worker; `--probe-workers` probe workers, each with its own empty data directory, cache and HOME and
  GATE_WORKER_SHARED_DISK=0, so they reach the gate only through Redis and HTTP (the upload's file, the registry
  snapshot, reference images by sha256). With --kill, the probe worker that takes the first job is killed with
  -9 while in it, and restarted a second later, as a supervisor would.

Every LoRA is delivered at once, signed, each by its own uploader (so no repeat-infringement history couples
them). Per LoRA it prints both verdicts and reason kinds and whether they agree; then recall on the character
LoRAs (block or quarantine), clean LoRAs flagged, uploads decided without the whole registry's evidence (no
registry version, or fewer characters than registered), uploads decided other than once (journal lines), the
registry versions named (a fresh gate's first answers bring the references' vectors, which makes a new version
of the same characters), and the wall time of each (a ratio). Targets: the same verdicts, recall 1.00, 0/9
clean flagged, 0 without evidence, 0 decided twice.

    python -m benchmarks.topology [--probe-workers 2] [--no-kill] [--only ID ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.loopback import answers, free_port, wait_until
from gate.config import load_settings
from gate.detection.scanner import Scanner
from gate.hubs.client import deliver
from gate.record.db import open_db
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set

REPO = Path(__file__).resolve().parent.parent
SECRET, TOKEN = "topology-bench-secret", "topology-bench-worker-token"
FINAL = ("decided", "refused", "failed")


def reason_kinds(reasons: list[dict]) -> list[str]:
    return sorted(reason["kind"] for reason in reasons)


def one_box(world: World, loras: list[dict], workdir: Path) -> tuple[dict, float]:
    """Each LoRA scanned in this process, in turn: verdict and reason kinds; and the wall time for all of them."""
    settings = load_settings({"data_dir": str(workdir / "one-box")})
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    engine = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set), settings.device)
    scanner = Scanner(settings, db, engine)
    started, results = time.perf_counter(), {}
    for lora in loras:
        path = world.path(lora["path"])
        result = scanner.scan(path, filename=path.name).to_dict()
        results[lora["id"]] = {"verdict": result["verdict"], "reasons": reason_kinds(result["reasons"])}
        print(f"  one box   {lora['id']:<28} {result['verdict']:<11} {time.perf_counter() - started:7.1f} s",
              flush=True)
    return results, time.perf_counter() - started


class Topology:
    """Redis, the web gate, a record worker and probe workers that share nothing with it, as separate processes."""

    def __init__(self, workdir: Path, probe_workers: int):
        self.workdir = workdir
        redis_port, web_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{web_port}"
        self.env = {**os.environ, "GATE_PROFILE": "demo", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "GATE_DATA_DIR": str(workdir / "gate" / "data"), "GATE_UPLOAD_SECRET": SECRET,
                    "GATE_PUBLIC_URL": self.base, "GATE_WORKER_TOKEN": TOKEN}
        # Two cores shared by the probe workers: each gets its share of torch's threads, not all of them.
        self.threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // probe_workers))
        self.processes: dict[str, subprocess.Popen] = {}
        self.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], {})
        self.start("web", [sys.executable, "-m", "gate", "serve", "--port", str(web_port)], {})
        wait_until(lambda: answers(f"{self.base}/healthz"), 60, "gate serve did not answer")
        self.start("record", [sys.executable, "-m", "gate", "worker", "--queues", "intake,catalogue"], {})
        self.probers = [f"probe-{n}" for n in range(probe_workers)]
        for name in self.probers:
            self.start_prober(name)

    def start(self, name: str, command: list[str], env: dict) -> None:
        log = open(self.workdir / f"{name}.log", "a")
        self.processes[name] = subprocess.Popen(command, cwd=REPO, env={**self.env, **env}, stdout=log,
                                                stderr=subprocess.STDOUT)

    def start_prober(self, name: str) -> None:
        machine = self.workdir / name  # its own disk: nothing of the gate's is readable from here
        self.start(name, [sys.executable, "-m", "gate", "worker", "--queues", "probe,catalogue_probe", "--name",
                          name], {"GATE_DATA_DIR": str(machine / "data"), "GATE_CACHE_DIR": str(machine / "cache"),
                                  "HOME": str(machine / "home"), "GATE_WORKER_SHARED_DISK": "0",
                                  "OMP_NUM_THREADS": self.threads})

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_holder(self, upload_id: str, timeout: float = 300) -> str:
        """kill -9 the probe worker holding this upload's first probe job, and restart it a second later."""
        job = f"({upload_id}-g0-probe)"
        wait_until(lambda: any(job in self.log(name) for name in self.probers), timeout, "no worker took the job")
        victim = next(name for name in self.probers if job in self.log(name))
        self.processes[victim].send_signal(signal.SIGKILL)
        self.processes[victim].wait(timeout=10)
        time.sleep(1)
        self.start_prober(victim)
        return victim

    def status(self, upload_id: str) -> dict:
        with urllib.request.urlopen(f"{self.base}/v1/uploads/{upload_id}", timeout=10) as answer:
            return json.loads(answer.read())

    def journal(self, upload_id: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "gate", "status", upload_id, "--json"], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def topology(world: World, loras: list[dict], workdir: Path, probe_workers: int, kill: bool,
             settle: float) -> tuple[dict, float, dict]:
    """Every LoRA delivered at once to the topology; each one's final status, the wall time until the last is
    final, and what happened to the worker killed."""
    deployment = Topology(workdir, probe_workers)
    try:
        wait_until(lambda: all(" listening on " in deployment.log(name) for name in deployment.probers), 300,
                   "the probe workers did not start")
        started, ids = time.perf_counter(), {}
        for lora in loras:
            path = world.path(lora["path"])
            code, answer = deliver(f"{deployment.base}/v1/uploads", path, SECRET,
                                   {"hub": "bench", "model_id": f"m-{lora['id']}", "version_id": "1",
                                    "uploader": f"u-{lora['id']}"})
            if code != 202:
                raise RuntimeError(f"{lora['id']}: the gate answered {code}: {answer}")
            ids[lora["id"]] = answer["id"]
        killed = {}
        if kill:
            first = ids[loras[0]["id"]]
            killed = {"worker": deployment.kill_holder(first), "upload": first}
        finals: dict[str, dict] = {}
        deadline = time.time() + settle
        while len(finals) < len(ids) and time.time() < deadline:
            for lora_id, upload_id in ids.items():
                if lora_id not in finals and (state := deployment.status(upload_id))["state"] in FINAL:
                    finals[lora_id] = state
                    print(f"  topology  {lora_id:<28} {state['verdict'] or state['state']:<11} "
                          f"{time.perf_counter() - started:7.1f} s", flush=True)
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        for lora_id, upload_id in ids.items():
            finals.setdefault(lora_id, deployment.status(upload_id))
            journal = deployment.journal(upload_id)
            finals[lora_id]["decided_lines"] = sum(" -> decided)" in line for line in journal["journal"])
            finals[lora_id]["generation"] = journal.get("generation")
        return finals, elapsed, killed
    finally:
        deployment.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe-workers", type=int, default=2)
    parser.add_argument("--no-kill", dest="kill", action="store_false", help="kill no probe worker")
    parser.add_argument("--only", nargs="*", help="these LoRA ids only")
    parser.add_argument("--settle", type=float, default=3600, help="seconds allowed for every upload to be final")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = load_settings({})
    world = World.load(settings.world_dir)
    loras = [lora for lora in world.loras() if not args.only or lora["id"] in args.only]
    registered = len(world.characters(registered=True))
    with tempfile.TemporaryDirectory(prefix="gate-topology-") as tmp:
        boxed, boxed_s = one_box(world, loras, Path(tmp))
        remote, remote_s, killed = topology(world, loras, Path(tmp), args.probe_workers, args.kill, args.settle)

    versions = {state.get("registry", {}).get("version") for state in remote.values()}
    rows, same = [], 0
    for lora in loras:
        state, box = remote[lora["id"]], boxed[lora["id"]]
        scope = state.get("registry") or {}
        agrees = state["state"] == "decided" and state["verdict"] == box["verdict"] and \
            reason_kinds(state["reasons"]) == box["reasons"]
        same += agrees
        rows.append({"lora": lora["id"], "kind": lora["kind"], "expected": lora["expected"],
                     "one_box": box["verdict"], "topology": state["verdict"] or state["state"], "agrees": agrees,
                     "reasons": ", ".join(reason_kinds(state["reasons"])), "characters": scope.get("characters"),
                     "measured": len(scope.get("measured") or []), "decided_lines": state["decided_lines"],
                     "generation": state["generation"], "version": scope.get("version")})
    flagged = ("block", "quarantine")
    characters = [row for row in rows if row["kind"] == "character"]
    clean = [row for row in rows if row["kind"] != "character"]
    summary = {
        "same": same, "loras": len(rows),
        "recall_one_box": sum(row["one_box"] in flagged for row in characters),
        "recall_topology": sum(row["topology"] in flagged for row in characters), "characters": len(characters),
        "clean_flagged_one_box": sum(row["one_box"] in flagged for row in clean),
        "clean_flagged_topology": sum(row["topology"] in flagged for row in clean), "clean": len(clean),
        "without_evidence": sum(not row["version"] or row["characters"] != registered for row in rows),
        "versions": len(versions - {None}),
        "decided_twice": sum(row["decided_lines"] != 1 for row in rows),
        "one_box_s": round(boxed_s, 1), "topology_s": round(remote_s, 1), "killed": killed,
    }

    print(f"\nshare-nothing topology vs one box, {datetime.date.today()}, {os.cpu_count()} cores, "
          f"{args.probe_workers} probe workers"
          + (f", {killed['worker']} killed -9 in upload {killed['upload']}'s probe job" if killed else "") + "\n")
    print("| LoRA | kind | expected | one box | topology | same | topology's reasons | registry characters "
          "| measured in full | decided lines | generation |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['lora']} | {row['kind']} | {row['expected']} | {row['one_box']} | {row['topology']} "
              f"| {'yes' if row['agrees'] else 'NO'} | {row['reasons']} | {row['characters']} | {row['measured']} "
              f"| {row['decided_lines']} | {row['generation']} |")
    n, k = summary["characters"], summary["clean"]
    print(f"\n| | one box (baseline) | topology |\n|---|---|---|\n"
          f"| same verdict and reasons | | {same}/{len(rows)} |\n"
          f"| recall (character LoRAs flagged) | {summary['recall_one_box']}/{n} | {summary['recall_topology']}/{n} |\n"
          f"| clean LoRAs flagged | {summary['clean_flagged_one_box']}/{k} "
          f"| {summary['clean_flagged_topology']}/{k} |\n"
          f"| decided without the whole registry's evidence | | {summary['without_evidence']} |\n"
          f"| decided other than once | | {summary['decided_twice']} |\n"
          f"| registry versions the decisions name | | {summary['versions']} |\n"
          f"| wall time, s | {summary['one_box_s']} | {summary['topology_s']} "
          f"({summary['topology_s'] / max(summary['one_box_s'], 1e-9):.2f}x) |")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
