"""Benchmark: the web gate under a slowloris and under a forged-signature flood, against the same gate at rest.

`gate serve` runs on its embedded default (loopback, a temporary data dir, TMPDIR inside it so the server's own
temp files count). Three phases of --seconds each:

- rest: nothing but the measurement;
- slowloris: --connections connections from 127.0.0.2-127.0.0.11, each sending part of a request head and then
  a byte every 3 s, reconnecting whenever the gate drops it;
- forged: 8 senders from 127.0.0.2-127.0.0.9, in turn: a 30 MiB multipart body signed v1 with the wrong secret
  (a valid timestamp), a 900 MiB body signed v1 sent whole, and a 900 MiB body with a forged v2 signature sent
  whole (the issue's attack), each with nothing but what an outsider has.

Throughout, /healthz is requested from 127.0.0.1 on a fresh connection every 20 ms (5 s timeout; a timeout counts
as 5000 ms and a failure), and the gate's process tree is sampled: resident memory (VmRSS), bytes it wrote to
storage (/proc/<pid>/io write_bytes) and bytes on disk under its data dir. Targets (issue 24): /healthz p99 under
50 ms during both attacks; at most 64 MiB of disk written by unauthenticated requests.

--baseline REF runs the same phases against another commit (a git worktree) in the same run, e.g. 89cdcb2, the
last commit served by waitress.

    python -m benchmarks.attacks [--seconds 20] [--connections 300] [--baseline REF] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.loopback import answers, free_port, wait_until
from gate.hubs.signatures import DIGEST_HEADER, sign, sign_digest

REPO = Path(__file__).resolve().parent.parent
SECRET = "attacks-secret"
MiB = 1024 * 1024


def _tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _proc_field(pid: int, name: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _disk_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total


class Gate:
    def __init__(self, tree: Path, workdir: Path):
        self.port, self.workdir = free_port(), workdir
        (workdir / "tmp").mkdir(parents=True)
        env = {**os.environ, "GATE_PROFILE": "demo", "GATE_DATA_DIR": str(workdir / "data"), "REDIS_URL": "",
               "GATE_REDIS_URL": "", "GATE_UPLOAD_SECRET": SECRET, "TMPDIR": str(workdir / "tmp"),
               "PYTHONPATH": str(tree)}
        self.process = subprocess.Popen([sys.executable, "-m", "gate", "serve", "--port", str(self.port)], cwd=tree,
                                        env=env, stdout=open(workdir / "serve.log", "w"), stderr=subprocess.STDOUT)
        wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/healthz"), 90, "gate serve did not start")

    def written(self) -> int:
        """Bytes the gate's processes caused to be written to storage (the web process and its scan worker)."""
        return sum(_proc_field(pid, "io", "write_bytes:") for pid in _tree_pids(self.process.pid))

    def rss(self) -> int:
        return _proc_field(self.process.pid, "status", "VmRSS:") * 1024

    def stop(self) -> None:
        for pid in reversed(_tree_pids(self.process.pid)):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        self.process.wait(timeout=10)


def measure(gate: Gate, seconds: float) -> dict:
    """/healthz latencies and the gate's resources over `seconds`."""
    latencies, failures = [], 0
    peak_rss, peak_disk = 0, 0
    written_before = gate.written()
    end = time.time() + seconds
    while time.time() < end:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gate.port}/healthz", timeout=5) as answer:
                answer.read()
            latencies.append((time.perf_counter() - started) * 1000)
        except OSError:
            failures += 1
            latencies.append(5000.0)
        peak_rss = max(peak_rss, gate.rss())
        if len(latencies) % 5 == 0:
            peak_disk = max(peak_disk, _disk_bytes(gate.workdir / "data") + _disk_bytes(gate.workdir / "tmp"))
        time.sleep(0.02)
    latencies.sort()
    return {"requests": len(latencies), "failed": failures, "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "peak_rss_mib": round(peak_rss / MiB, 1), "written_mib": round((gate.written() - written_before) / MiB, 1),
            "peak_disk_mib": round(peak_disk / MiB, 1)}


class Attack:
    """An attacker on its own event loop in a thread."""

    def __init__(self, coroutines):
        self.stopping = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._all(coroutines),),
                                       daemon=True)
        self.thread.start()

    async def _all(self, coroutines):
        await asyncio.gather(*(make(self) for make in coroutines), return_exceptions=True)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=30)


def slowloris(port: int, source: str):
    async def run(attack: Attack):
        while not attack.stopping:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gate\r\nX-Slow: ")
                while not attack.stopping and not reader.at_eof():
                    await asyncio.sleep(3)
                    writer.write(b"a")
                    await writer.drain()
                writer.close()
            except OSError:
                await asyncio.sleep(0.5)
    return run


def forged(port: int, source: str):
    chunk = os.urandom(MiB)

    async def send(length: int, signature: str, extra: str = ""):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            writer.write((f"POST /v1/uploads HTTP/1.1\r\nHost: gate\r\nX-Gate-Signature: {signature}\r\n{extra}"
                          "Content-Type: multipart/form-data; boundary=b\r\n"
                          f"Content-Length: {length}\r\n\r\n").encode())
            sent = 0
            while sent < length and not reader.at_eof():
                piece = chunk[:min(MiB, length - sent)]
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
            await asyncio.wait_for(reader.read(65536), 10)
        finally:
            writer.close()

    async def run(attack: Attack):
        digest = "ab" * 32
        kinds = [(30 * MiB, lambda: sign(b"forged", "not-the-secret"), ""),
                 (900 * MiB, lambda: sign(b"forged", "not-the-secret"), ""),
                 (900 * MiB, lambda: sign_digest(digest, "not-the-secret"), f"{DIGEST_HEADER}: {digest}\r\n")]
        turn = 0
        while not attack.stopping:
            length, signature, extra = kinds[turn % len(kinds)]
            turn += 1
            try:
                await send(length, signature(), extra)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
    return run


def run_tree(label: str, tree: Path, args, workdir: Path) -> list[dict]:
    gate = Gate(tree, workdir)
    rows = []
    try:
        time.sleep(2)
        rows.append({"tree": label, "phase": "rest", **measure(gate, args.seconds)})
        sources = [f"127.0.0.{2 + i % 10}" for i in range(args.connections)]
        attack = Attack([slowloris(gate.port, source) for source in sources])
        time.sleep(3)
        rows.append({"tree": label, "phase": f"slowloris ({args.connections} connections)",
                     **measure(gate, args.seconds)})
        attack.stop()
        attack = Attack([forged(gate.port, f"127.0.0.{2 + i}") for i in range(8)])
        rows.append({"tree": label, "phase": "forged-signature flood (8 senders)", **measure(gate, args.seconds)})
        attack.stop()
    finally:
        gate.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--baseline", help="a commit to measure the same way, in the same run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gate-attacks-") as tmp:
        trees = [("this tree", REPO)]
        if args.baseline:
            baseline = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO,
                           check=True, capture_output=True)
            trees.append((f"baseline {args.baseline}", baseline))
        try:
            for i, (label, tree) in enumerate(trees):
                rows += run_tree(label, tree, args, Path(tmp) / f"run{i}")
                for row in rows[-3:]:
                    print(json.dumps(row), file=sys.stderr)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "baseline")], cwd=REPO,
                               capture_output=True)
    print(f"\nthe web gate under attack, {datetime.date.today()}, {os.cpu_count()} cores, {args.seconds:g} s a phase; "
          "/healthz from 127.0.0.1 every 20 ms on a fresh connection\n")
    print("| tree | phase | /healthz p50, ms | p99, ms | failed | peak RSS, MiB | written to storage, MiB "
          "| peak on disk, MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tree']} | {row['phase']} | {row['p50_ms']} | {row['p99_ms']} | {row['failed']}/"
              f"{row['requests']} | {row['peak_rss_mib']} | {row['written_mib']} | {row['peak_disk_mib']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
