"""How fast `gate serve` accepts a training set, and what it costs its memory: a signed POST /v1/datasets of
zips of 1,000 and 10,000 images (the fixture world's drawings, repeated under new names) against one image,
on the same server, with GATE_IMAGES_WAIT_SECONDS=0 so that the answer is the acceptance (202), not the
verdict. The web process's resident memory is read after each.

    GATE_PROFILE=demo python -m benchmarks.image_accept [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import psutil

from benchmarks.loopback import answers, free_port, wait_until
from fixtures import image_truth
from gate.hubs.client import deliver

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"


def _zip(path: Path, count: int) -> Path:
    drawings = [e["path"].read_bytes() for e in image_truth.load(split="tuning")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # PNGs do not compress further
        for n in range(count):
            archive.writestr(f"img_{n:05d}.png", drawings[n % len(drawings)])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="image-accept-"))
    port = free_port()
    env = {**os.environ, "GATE_PROFILE": "demo", "GATE_DATA_DIR": str(work / "data"), "GATE_UPLOAD_SECRET": SECRET,
           "GATE_IMAGES_WAIT_SECONDS": "0"}
    server = subprocess.Popen([sys.executable, "-m", "gate", "serve", "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{base}/healthz"), 60, "gate serve did not answer")
        web = psutil.Process(server.pid)
        single = image_truth.load(split="tuning")[0]["path"]
        rows = []
        for label, path in (("baseline: one image", single), ("1,000 images", _zip(work / "1k.zip", 1000)),
                            ("10,000 images", _zip(work / "10k.zip", 10_000))):
            seconds = []
            for n in range(args.repeat):
                mark = time.perf_counter()
                status, answer = deliver(f"{base}/v1/datasets", path, SECRET, {"model_id": f"{label}-{n}"})
                seconds.append(time.perf_counter() - mark)
                assert status == 202, (status, answer)
            rows.append((label, path.stat().st_size, statistics.median(seconds), web.memory_info().rss))
        print(f"| what (POST /v1/datasets, median of {args.repeat}) | body, MiB | accepted (202) in, ms | "
              "web RSS after, MiB |\n| --- | --- | --- | --- |")
        for label, size, median, rss in rows:
            print(f"| {label} | {size / 2**20:.2f} | {median * 1000:.0f} | {rss / 2**20:.0f} |")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
