"""Benchmark: the web process's footprint (import time, peak RSS, torch loaded or not), a baseline tree vs this one.

For each tree, in fresh subprocesses (PYTHONPATH and cwd set to the tree, GATE_PROFILE=demo, a temporary data dir):
- import time: wall time of a fresh interpreter that imports gate.app and builds the app (median of --runs, the
  trees' runs interleaved), and which heavy modules (torch, diffusers, transformers, peft) it then holds;
- Redis mode: `gate serve` and a separate `gate worker`; once the worker has registered (its engine loaded), one
  signed fixture LoRA is delivered and polled until decided; then the web process's VmHWM and VmRSS
  (/proc/<pid>/status) and whether libtorch is mapped into it (/proc/<pid>/maps);
- the embedded default (no Redis): the same without a worker (decision time includes any lazy model load);
- split workers (Redis): `gate serve`, a record worker (`--queues intake,catalogue`) and a probe worker
  (`--queues probe`), as a deployment splits them; the record worker's VmHWM and whether libtorch is mapped
  into it are measured too.
The process measured is the one started, which serves HTTP; its descendants' peak RSS is summed separately.

    python -m benchmarks.web_footprint --baseline PATH_OR_REF [--tree PATH] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

from redis import Redis

from gate.hubs.client import deliver

REPO = Path(__file__).resolve().parent.parent
SECRET = "footprint-secret"
LORA = "fixtures/world/loras/style_sepia_peft.safetensors"
HEAVY = ("torch", "diffusers", "transformers", "peft")
IMPORT = (f"import json, sys, time; t = time.perf_counter(); import gate.app; gate.app.create_app(); print(json.dumps("
          f"{{'inner_s': time.perf_counter() - t, 'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
          f"'gate': gate.app.__file__}}))")


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def _commit(tree: Path) -> str:
    try:
        dirty = "+dirty" if _git(tree, "status", "--porcelain", "--untracked-files=no") else ""
        return _git(tree, "rev-parse", "--short=12", "HEAD") + dirty
    except subprocess.CalledProcessError:
        return "not a git tree"


def _env(tree: Path, data: str, redis: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GATE_REDIS_URL", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tree), GATE_PROFILE="demo", GATE_DATA_DIR=data, GATE_UPLOAD_SECRET=SECRET)
    return {**env, "REDIS_URL": redis} if redis else env


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
    except OSError:
        return ""


def _kib(pid: int, field: str) -> int:
    return next((int(x.split()[1]) for x in _proc(pid, "status").splitlines() if x.startswith(field + ":")), 0)


def _descendants(pid: int) -> list[int]:
    stats = {int(e.name): _proc(int(e.name), "stat") for e in Path("/proc").iterdir() if e.name.isdigit()}
    parents = {child: int(stat.rsplit(")", 1)[1].split()[1]) for child, stat in stats.items() if stat}
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each started process's group and every descendant (even one in a group of its own), then SIGKILL."""
    pids = {p.pid for p in processes} | {d for p in processes for d in _descendants(p.pid)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig) if pid in {p.pid for p in processes} else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 15
        while time.time() < deadline and [p.poll() for p in processes] and any(
                _proc(pid, "stat").rsplit(")", 1)[-1].split()[:1] not in ([], ["Z"]) for pid in pids):  # alive
            time.sleep(0.2)


def import_times(trees: list[Path], runs: int) -> list[dict]:
    walls, inner, heavy = [[] for _ in trees], [[] for _ in trees], [[] for _ in trees]
    for i, tree in [pair for _ in range(runs) for pair in enumerate(trees)]:
        with tempfile.TemporaryDirectory(prefix="gate-fp-") as data:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", IMPORT], cwd=tree, env=_env(tree, data, None),
                                  capture_output=True, text=True, timeout=300)
            walls[i].append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"import gate.app failed in {tree}:\n{done.stderr[-3000:]}")
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        if not answer["gate"].startswith(str(tree)):
            raise SystemExit(f"imported {answer['gate']}, not from {tree}: is PYTHONPATH overridden?")
        inner[i].append(answer["inner_s"])
        heavy[i] = answer["heavy"]
    return [{"wall_s": statistics.median(w), "inner_s": statistics.median(n), "heavy": h}
            for w, n, h in zip(walls, inner, heavy, strict=True)]


def _wait(check, process: subprocess.Popen, seconds: float, failure: str) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{failure} (exit status {process.poll()})")
        time.sleep(0.2)


def serve_run(tree: Path, redis: str | None, timeout: float, split: bool = False) -> dict:
    """Start the web gate (and, with Redis, a separate worker, or with `split` a record worker and a probe
    worker), deliver one LoRA, wait for its decision."""
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="gate-fp-") as data:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            env, port = _env(tree, data, redis), probe.getsockname()[1]
        names = ("serve", "worker", "prober") if split else ("serve", "worker") if redis else ("serve",)
        logs = {name: open(Path(data) / f"{name}.log", "w+") for name in names}  # noqa: SIM115
        try:
            if redis:
                Redis.from_url(redis).flushdb()
            command = {"serve": ["serve", "--host", "127.0.0.1", "--port", str(port)],
                       "worker": ["worker", "--queues", "intake,catalogue"] if split else ["worker"],
                       "prober": ["worker", "--queues", "probe"]}
            for name in names:
                processes.append(subprocess.Popen([sys.executable, "-m", "gate", *command[name]], cwd=tree, env=env,
                                                  stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True))
            serve, worker = processes[0], processes[1] if redis else None
            base = f"http://127.0.0.1:{port}"
            _wait(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=2), serve, 90, "gate serve did not start")
            if redis:  # a worker registers once its engine (if any) is loaded and it takes jobs
                _wait(lambda: len(Redis.from_url(redis).smembers("rq:workers")) == len(names) - 1, worker, 180,
                      "gate worker did not start")
            start, children_hwm = time.perf_counter(), {}
            status, answer = deliver(f"{base}/v1/uploads", tree / LORA, SECRET,
                                     {"hub": "bench", "model_id": "m-1", "version_id": "v-1", "title": "sepia style"})
            if status != 202:
                raise RuntimeError(f"the delivery was answered {status}: {answer}")
            deadline = time.time() + timeout
            while True:
                children_hwm |= {child: _kib(child, "VmHWM") for child in _descendants(serve.pid)}
                final = json.loads(urllib.request.urlopen(answer["status_url"], timeout=10).read())
                if final["state"] not in ("received", "scanning"):
                    break
                if serve.poll() is not None or (worker and worker.poll() is not None):
                    raise RuntimeError("a gate process exited while the upload was being judged")
                if time.time() > deadline:
                    raise RuntimeError(f"still {final['state']} after {timeout:.0f} s")
                time.sleep(0.25)
            decided, maps = time.perf_counter() - start, _proc(serve.pid, "maps")
            children_hwm |= {child: _kib(child, "VmHWM") for child in _descendants(serve.pid)}
            return {"state": final["state"], "verdict": final.get("verdict"), "decision_s": decided,
                    "web_hwm_mib": _kib(serve.pid, "VmHWM") / 1024, "web_rss_mib": _kib(serve.pid, "VmRSS") / 1024,
                    "torch_in_web": "libtorch_cpu.so" in maps or "libtorch_cuda.so" in maps,
                    "children": len(children_hwm), "children_hwm_mib": sum(children_hwm.values()) / 1024,
                    "worker_hwm_mib": _kib(worker.pid, "VmHWM") / 1024 if worker else None,
                    "torch_in_worker": "libtorch_cpu.so" in _proc(worker.pid, "maps") if worker else None}
        except Exception as exc:  # noqa: BLE001 - reported in the table, with the processes' logs
            tails = {name: (log.seek(0), log.read()[-1500:])[1] for name, log in logs.items()}
            return {"error": f"{type(exc).__name__}: {exc}", "log_tail": tails}
        finally:
            _stop(processes)
            for log in logs.values():
                log.close()
            if redis:
                Redis.from_url(redis).flushdb()


MODES = {"redis": True, "embedded": None, "split": True}
LABELS = {"redis": "Redis mode", "embedded": "embedded default", "split": "split workers"}


def measure(trees: list[Path], args) -> list[dict]:
    """Each step for one tree then the other, so that a busy spell on the machine is less likely to hit one only."""
    results = [{"tree": str(tree), "commit": _commit(tree)} for tree in trees]
    print("timing imports ...", file=sys.stderr, flush=True)
    for result, timed in zip(results, import_times(trees, args.runs), strict=True):
        result["import"] = timed
    for mode, redis in MODES.items():
        for result, tree in zip(results, trees, strict=True):
            print(f"{mode}: {tree} ...", file=sys.stderr, flush=True)
            result[mode] = serve_run(tree, redis and args.redis, args.timeout, split=mode == "split")
    return results


def _resolve(spec: str, cleanup: list[Path]) -> Path:
    if Path(spec).is_dir():
        return Path(spec).resolve()
    try:
        _git(REPO, "rev-parse", "--verify", f"{spec}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"--baseline {spec!r} is neither a directory nor a git ref of {REPO}") from None
    path = Path(tempfile.mkdtemp(prefix="gate-fp-baseline-")) / "tree"
    cleanup.append(path)
    _git(REPO, "worktree", "add", "--detach", str(path), spec)
    return path


def _rows(result: dict) -> list[tuple[str, object]]:
    rows = [("import gate.app + create_app, fresh interpreter, wall s (median)", result["import"]["wall_s"]),
            ("  of which the import and create_app themselves, s", result["import"]["inner_s"]),
            ("heavy modules in sys.modules after that", ", ".join(result["import"]["heavy"]) or "none")]
    for mode, label in LABELS.items():
        run = result[mode]
        if "error" in run:
            rows.append((f"{label}: error", run["error"]))
            continue
        rows += [(f"{label}: web process peak RSS (VmHWM), MiB", run["web_hwm_mib"]),
                 (f"{label}: web process RSS after the decision, MiB", run["web_rss_mib"]),
                 (f"{label}: torch in web process", "yes" if run["torch_in_web"] else "no"),
                 (f"{label}: web process's children, count", run["children"]),
                 (f"{label}: web process's children, peak RSS sum, MiB", run["children_hwm_mib"]),
                 (f"{label}: outcome (state, verdict)", f"{run['state']}, {run['verdict']}"),
                 (f"{label}: decision time, s", run["decision_s"])]
        if run["worker_hwm_mib"] is not None:
            which = "record worker (intake,catalogue)" if mode == "split" else "separate `gate worker`"
            rows.append((f"{label}: {which} peak RSS, MiB", run["worker_hwm_mib"]))
            rows.append((f"{label}: torch in the {which}", "yes" if run["torch_in_worker"] else "no"))
    return rows


def _cell(value: object) -> str:
    return (f"{value:.2f}" if value < 10 else f"{value:.0f}") if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the 'before' tree: a directory, or a git ref of this repo")
    parser.add_argument("--tree", default=str(REPO), help="the tree to compare (default: this repository)")
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters timed for the import time")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="a Redis database it may flush")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a decision")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the cleanup (finally) runs on a kill too
    load, cleanup = os.getloadavg()[0], []
    try:
        trees = [_resolve(args.baseline, cleanup), Path(args.tree).resolve()]
        results = dict(zip(("baseline", "tree"), measure(trees, args), strict=True))
    finally:
        for path in cleanup:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, timeout=60, check=False)
            shutil.rmtree(path.parent, ignore_errors=True)
    print(f"\n{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, Python {sys.version.split()[0]}, torch "
          f"{version('torch')}, {os.cpu_count()} cores, load average {load:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end; fixture {LORA}")
    for key in results:
        print(f"{key}: {results[key]['tree']} at {results[key]['commit']}")
    print("\n| measure | baseline | this tree | ratio (this/baseline) |\n| --- | --- | --- | --- |")
    before, after = dict(_rows(results["baseline"])), dict(_rows(results["tree"]))
    for name in dict.fromkeys([*before, *after]):
        a, b = before.get(name, "-"), after.get(name, "-")
        numbers = isinstance(a, float) and isinstance(b, float) and a
        ratio = f"{b / a:.2f}" if numbers else "same" if a == b else "differs"
        print(f"| {name} | {_cell(a)} | {_cell(b)} | {ratio} |")
    for key, run in [(f"{key}, {mode}", results[key][mode]) for key in results for mode in MODES]:
        if "error" in run:
            print(f"\n{key}: {run['error']}; the logs' ends:\n{run['log_tail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
