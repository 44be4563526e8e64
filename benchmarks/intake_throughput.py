"""Benchmark: `gate inspect` end to end (process start included) against `sha256sum` on the same file.

Builds an SDXL-shaped rank-32 kohya LoRA (about 230 MB, every module such a LoRA trains), warms the page
cache, then times each command N times. Peak RSS comes from GNU time (`/usr/bin/time -f %M`), a tiny
parent: Linux keeps ru_maxrss across exec, so a child forked from this (large) process would report ours.

    python -m benchmarks.intake_throughput [--rank 32] [--runs 5] [--keep PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import save_file

from fixtures.intake_corpus import kohya_metadata, lora_tensors

MB = 1e6


def _timed(argv: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS bytes, exit status) of one child process."""
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        peak_kib = int(report.read().split()[-1])
    return seconds, peak_kib * 1024, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the LoRA here and keep it")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    path = args.keep or workdir / "sdxl_rank32.safetensors"
    tensors = lora_tensors("sdxl-full", "kohya", rank=args.rank, seed=1)
    largest = max(t.nbytes for t in tensors.values())
    save_file(tensors, path, metadata=kohya_metadata("sdxl", "bench", rank=args.rank))
    del tensors
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    gate = shutil.which("gate") or str(Path(sys.executable).with_name("gate"))
    commands = {"sha256sum": ["sha256sum", str(path)], "gate inspect --json": [gate, "inspect", "--json", str(path)]}
    results = {}
    for name, argv in commands.items():
        runs = [_timed(argv) for _ in range(args.runs)]
        assert all(code == 0 for _, _, code in runs), f"{name} failed"
        results[name] = (statistics.median(t for t, _, _ in runs), max(rss for _, rss, _ in runs))

    base_time = results["sha256sum"][0]
    print(f"\nfile: SDXL kohya LoRA, rank {args.rank}, {size / MB:.1f} MB, largest tensor {largest / MB:.1f} MB, "
          f"median of {args.runs} warm runs\n")
    print(f"| {'command':<20} | {'seconds':>8} | {'MB/s':>7} | {'speed vs sha256sum':>18} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 22}|{'-' * 10}|{'-' * 9}|{'-' * 20}|{'-' * 13}|")
    for name, (seconds, rss) in results.items():
        print(f"| {name:<20} | {seconds:>8.3f} | {size / MB / seconds:>7.0f} | {base_time / seconds:>17.2f}x "
              f"| {rss / MB:>11.1f} |")
    gate_rss = results["gate inspect --json"][1]
    print(f"\npeak RSS of gate inspect: {gate_rss / MB:.1f} MB; budget (largest tensor + 64 MB): "
          f"{(largest + 64 * 2**20) / MB:.1f} MB")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
