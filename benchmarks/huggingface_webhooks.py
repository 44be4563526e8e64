"""Benchmark: the acceptance path of Hugging Face webhooks and URL uploads, against `GET /healthz` (the framework's
floor) and signed multipart deliveries, in the same run and the same server (gunicorn, REDIS_URL, no worker:
only recording and enqueueing is measured; nothing is fetched). Open loop, as benchmarks.webhook_load drives it.
After the run, every accepted webhook and URL upload is counted in the record and its fetch job in Redis.

    python -m benchmarks.huggingface_webhooks [--rate 100] [--seconds 5] [--workers 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.webhook_load import SECRET, _drive, _free_port, _requests
from gate import signatures
from gate.db import open_db

REPO = Path(__file__).resolve().parent.parent
HOOK_SECRET = "load-hook-secret"


def _hooks(count: int) -> list[tuple[str, str, bytes, dict]]:
    built = []
    for i in range(count):
        body = json.dumps({"event": {"action": "update", "scope": "repo.content"},
                           "repo": {"type": "model", "name": f"user{i % 97}/lora-{i}", "headSha": f"{i:040x}"},
                           "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": f"{i:040x}"}],
                           "webhook": {"id": "bench", "version": 3}}).encode()
        built.append(("POST", "/webhooks/huggingface", body, {"Content-Type": "application/json",
                                                              "X-Webhook-Secret": HOOK_SECRET}))
    return built


def _url_uploads(count: int) -> list[tuple[str, str, bytes, dict]]:
    built = []
    for i in range(count):
        body = json.dumps({"url": f"https://example.org/loras/{i}.safetensors",
                           "meta": {"hub": "loadhub", "model_id": f"u{i}", "version_id": "1"}}).encode()
        built.append(("POST", "/v1/uploads", body, {"Content-Type": "application/json",
                                                    "X-Gate-Signature": signatures.sign(body, SECRET)}))
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--connections", type=int, default=16, help="client keep-alive connections")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="a Redis database it may flush")
    args = parser.parse_args()

    from redis import Redis

    redis = Redis.from_url(args.redis)
    redis.flushdb()
    count = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="gate-hf-load-") as data:
        # Migrate first, as a deployment does (`gate db migrate`): gunicorn workers starting together on a fresh
        # record race to create the migrations table.
        open_db(Path(data) / "gate.db").conn.close()
        port = _free_port()
        env = {**os.environ, "GATE_DATA_DIR": data, "GATE_UPLOAD_SECRET": SECRET, "REDIS_URL": args.redis,
               "GATE_HUGGINGFACE_WEBHOOK_SECRET": HOOK_SECRET, "GATE_HUGGINGFACE_ENDPOINT": "http://127.0.0.1:9"}
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(args.workers), "--worker-class", "gthread",
             "--threads", str(args.threads), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
             "gate.app:create_app()"], cwd=REPO, env=env)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit("gunicorn did not start") from None
                    time.sleep(0.2)
            _drive(port, _requests("healthz", 100), 100, 8)  # warm up
            rows = []
            for name, requests in (("GET /healthz (baseline)", _requests("healthz", count)),
                                   ("POST /v1/uploads multipart (direct delivery)", _requests("upload", count)),
                                   ("POST /webhooks/huggingface (content update)", _hooks(count)),
                                   ("POST /v1/uploads JSON (URL upload)", _url_uploads(count))):
                rows.append((name, _drive(port, requests, args.rate, args.connections)))
        finally:
            server.terminate()
            server.wait(timeout=30)
        record = sqlite3.connect(Path(data) / "gate.db")
        deliveries = dict(record.execute("select kind, count(*) from deliveries group by kind").fetchall())
    queued = redis.llen("rq:queue:intake")
    redis.flushdb()

    print(f"\ngunicorn {args.workers} workers x {args.threads} threads, {args.rate:.0f}/s offered for "
          f"{args.seconds:.0f} s ({count} requests each), {args.connections} connections, loopback, "
          f"{os.cpu_count()} cores shared with the load generator\n")
    print("| request | accepted | per second | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, result in rows:
        print(f"| {name} | {result['ok']}/{result['sent']} | {result['per_second']:.0f} | {result['p50_ms']:.1f} | "
              f"{result['p99_ms']:.1f} | {result['max_ms']:.1f} |")
    base = rows[0][1]
    for name, result in rows[1:]:
        print(f"p99 {name} / p99 baseline: {result['p99_ms'] / base['p99_ms']:.2f}x")
    print(f"deliveries recorded: {deliveries}; jobs queued on intake (scans + fetches): {queued}")
    print(json.dumps({name: {"statuses": result["statuses"], "errors": result["errors"]} for name, result in rows}))


if __name__ == "__main__":
    main()
