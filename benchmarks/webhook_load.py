"""Benchmark: hub deliveries accepted per second, and their latency, against the gate under gunicorn (or, with
--server gate, `gate serve`'s own server) on loopback.

The gate runs as it would in production with Redis (gunicorn, gthread workers, REDIS_URL; no worker takes the
jobs, so only the acceptance path is measured). An open-loop generator sends deliveries at a fixed rate (each
with its own bytes and hub record, signed) from a pool of keep-alive connections; latency is measured from
each request's scheduled send time, so a server that falls behind is charged for the queueing it causes.
The baseline, in the same run and the same server: `GET /healthz`, the framework's floor. After the run,
every accepted delivery is counted in the record.

Kinds of delivery, each in its own phase: `upload` (multipart with the weights), `webhook` (a Hugging Face
content update) and `url` (a URL upload); the last two are recorded and answered, their fetch left to a worker.

    python -m benchmarks.webhook_load [--rate 500] [--seconds 10] [--kinds upload,webhook,url] [--workers 2]
                                      [--record-sync normal|full]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from gate.hubs import signatures
from gate.hubs.client import multipart

REPO = Path(__file__).resolve().parent.parent
SECRET = "load-secret"
HOOK_SECRET = "load-hook-secret"
WARM_UP = 64  # requests of each kind before the measured runs
KINDS = {"upload": "POST /v1/uploads multipart (signed delivery)",
         "webhook": "POST /webhooks/huggingface (content update)", "url": "POST /v1/uploads JSON (URL upload)"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _requests(kind: str, count: int, tag: str = "") -> list[tuple[str, str, bytes, dict]]:
    """Pre-built requests (method, path, body, headers), so the generator only sends; `tag` marks their ids."""
    built = []
    for n in range(count):
        i = f"{tag}{n}"
        if kind == "healthz":
            built.append(("GET", "/healthz", b"", {}))
        elif kind == "upload":
            body, content_type = multipart(secrets.token_bytes(2048), {
                "hub": "loadhub", "model_id": f"m{i}", "version_id": "1", "uploader": f"u{n % 97}",
                "title": f"load test {i}"}, f"lora{i}.safetensors")
            built.append(("POST", "/v1/uploads", body, {"Content-Type": content_type,
                                                         "X-Gate-Signature": signatures.sign(body, SECRET)}))
        elif kind == "webhook":
            body = json.dumps({"event": {"action": "update", "scope": "repo.content"},
                               "repo": {"type": "model", "name": f"user{n % 97}/lora-{i}",
                                        "headSha": f"{n:040x}"},
                               "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "0" * 40,
                                                "newSha": f"{n:040x}"}],
                               "webhook": {"id": "bench", "version": 3}}).encode()
            built.append(("POST", "/webhooks/huggingface", body, {"Content-Type": "application/json",
                                                                  "X-Webhook-Secret": HOOK_SECRET}))
        else:
            body = json.dumps({"url": f"https://example.org/loras/{i}.safetensors",
                               "meta": {"hub": "loadhub", "model_id": f"url{i}", "version_id": "1"}}).encode()
            built.append(("POST", "/v1/uploads", body, {"Content-Type": "application/json",
                                                        "X-Gate-Signature": signatures.sign(body, SECRET)}))
    return built


def _drive(port: int, requests: list, rate: float, connections: int) -> dict:
    """Send requests at `rate` per second (open loop); latency from each request's scheduled time."""
    work: queue.Queue = queue.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def sender() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while (item := work.get()) is not None:
            scheduled, (method, path, body, headers) = item
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                connection.request(method, path, body=body or None, headers=headers)
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = 0
            done = time.perf_counter()
            with lock:
                latencies.append(done - scheduled)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.2
    for i, request in enumerate(requests):
        work.put((start + i / rate, request))
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {"sent": len(requests), "ok": ok, "statuses": statuses, "per_second": ok / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * len(latencies)) - 1],
            "max_ms": 1000 * latencies[-1], "errors": errors[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500, help="deliveries per second offered")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--server", default="gunicorn", choices=("gunicorn", "gate"),
                        help="gunicorn's gthread workers, or `gate serve`'s own server (one process)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--connections", type=int, default=32, help="client keep-alive connections")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="a Redis database it may flush")
    parser.add_argument("--kinds", default="upload,webhook,url", help=f"which deliveries: {', '.join(KINDS)}")
    parser.add_argument("--record-sync", default="normal", choices=("normal", "full"),
                        help="GATE_RECORD_SYNC for the gate: full fsyncs each delivery before its 202")
    args = parser.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes a list of {', '.join(KINDS)}")

    from redis import Redis

    Redis.from_url(args.redis).flushdb()
    count = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="gate-load-") as data:
        port = _free_port()
        # Nothing is fetched (no worker runs); the endpoint is only where fetch jobs would go.
        env = {**os.environ, "GATE_DATA_DIR": data, "GATE_UPLOAD_SECRET": SECRET, "REDIS_URL": args.redis,
               "GATE_HUGGINGFACE_WEBHOOK_SECRET": HOOK_SECRET, "GATE_HUGGINGFACE_ENDPOINT": "http://127.0.0.1:9",
               "GATE_RECORD_SYNC": args.record_sync}
        if args.server == "gunicorn":
            command = [sys.executable, "-m", "gunicorn", "--workers", str(args.workers), "--worker-class", "gthread",
                       "--threads", str(args.threads), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
                       "gate.app:create_app()"]
        else:  # one process, as `gate serve` runs (with Redis it starts no scan worker of its own)
            command = [sys.executable, "-m", "gate", "serve", "--port", str(port), "--threads", str(args.threads)]
        server = subprocess.Popen(command, cwd=REPO, env={**env, "GATE_PROFILE": "demo"},
                                  stdout=subprocess.DEVNULL if args.server == "gate" else None)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit(f"{args.server} did not start") from None
                    time.sleep(0.2)
            # Warm up every thread's connections (each opens its record connection on its first delivery).
            for kind in ("healthz", *kinds):
                _drive(port, _requests(kind, WARM_UP, tag="warm"), 100, args.connections)
            rows = []
            for name, kind in [("GET /healthz (baseline)", "healthz"), *((KINDS[kind], kind) for kind in kinds)]:
                requests = _requests(kind, count)
                rows.append((name, _drive(port, requests, args.rate, args.connections)))
        finally:
            server.terminate()
            server.wait(timeout=30)
        record = sqlite3.connect(Path(data) / "gate.db")
        uploads = record.execute("select count(*) from uploads where model_id not like '%warm%'").fetchone()[0]
        deliveries = dict(record.execute("select kind, count(*) from deliveries where coalesce(repo_id, url) not like "
                                         "'%warm%' group by kind").fetchall())
    queued = Redis.from_url(args.redis).llen("rq:queue:intake")
    Redis.from_url(args.redis).flushdb()

    served = (f"gunicorn {args.workers} workers x {args.threads} threads" if args.server == "gunicorn"
              else f"gate serve, 1 process x {args.threads} threads")
    print(f"\n{served}, GATE_RECORD_SYNC={args.record_sync}, "
          f"{args.rate:.0f}/s offered for "
          f"{args.seconds:.0f} s ({count} requests each), {args.connections} connections, loopback, "
          f"{os.cpu_count()} cores shared with the load generator\n")
    print("| request | accepted | per second | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, result in rows:
        print(f"| {name} | {result['ok']}/{result['sent']} | {result['per_second']:.0f} | {result['p50_ms']:.1f} | "
              f"{result['p99_ms']:.1f} | {result['max_ms']:.1f} |")
    base = rows[0][1]
    print()
    for name, result in rows[1:]:
        print(f"p99 {name} / p99 baseline: {result['p99_ms'] / base['p99_ms']:.2f}x")
    accepted = {kind: result["ok"] for kind, (_, result) in zip(kinds, rows[1:], strict=True)}
    print(f"accepted {accepted}; recorded: uploads {uploads}, deliveries {deliveries}; intake jobs queued in Redis "
          f"(scans and fetches, warm-up included) {queued}")
    print(json.dumps({name: {"statuses": result["statuses"], "errors": result["errors"]} for name, result in rows}))


if __name__ == "__main__":
    main()
