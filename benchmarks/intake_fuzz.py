"""Fuzz benchmark: mutate valid LoRA files N times and inspect each; count crashes, hangs and outcomes.

A crash is any exception escaping inspect_file (refusals are results, not exceptions); a hang is one
inspection over --hang-seconds (interrupted by a timer). Memory is traced on a sample of the runs.

    python -m benchmarks.intake_fuzz [--mutations 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import signal
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from pathlib import Path

from fixtures.mutations import mutate, seed_files
from gate.intake import inspect_file


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=2.0)
    parser.add_argument("--trace-every", type=int, default=100, help="trace memory on every Nth run")
    args = parser.parse_args()

    seeds = seed_files()
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []
    hangs = 0
    peak_memory = 0
    slowest = 0.0
    signal.signal(signal.SIGALRM, _alarm)
    path = Path(tempfile.mkdtemp(prefix="gate-fuzz-")) / "case.safetensors"
    started = time.perf_counter()
    for index in range(args.mutations):
        path.write_bytes(mutate(rng.choice(seeds), rng))
        traced = index % args.trace_every == 0
        if traced:
            tracemalloc.start()
        begin = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.hang_seconds)
        try:
            result = inspect_file(path)
            outcomes[result.error.code if result.error else "accepted"] += 1
        except Hang:
            hangs += 1
        except Exception:  # noqa: BLE001 - counting crashes is the point
            crashes.append(traceback.format_exc(limit=3))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - begin)
            if traced:
                peak_memory = max(peak_memory, tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
    elapsed = time.perf_counter() - started

    print(f"\n| {'mutations':>9} | {'crashes':>7} | {'hangs':>5} | {'per second':>10} | {'slowest ms':>10} "
          f"| {'peak traced MB':>14} |")
    print(f"|{'-' * 11}|{'-' * 9}|{'-' * 7}|{'-' * 12}|{'-' * 12}|{'-' * 16}|")
    print(f"| {args.mutations:>9} | {len(crashes):>7} | {hangs:>5} | {args.mutations / elapsed:>10.0f} "
          f"| {slowest * 1000:>10.1f} | {peak_memory / 1e6:>14.1f} |")
    print("\noutcomes:")
    for code, count in outcomes.most_common():
        print(f"  {code:<24} {count:>7}")
    for crash in crashes[:5]:
        print("\nCRASH:\n" + crash)
    raise SystemExit(1 if crashes or hangs else 0)


if __name__ == "__main__":
    main()
