"""Benchmark: near-duplicate fingerprints. Recall per transformation on the fixture world's LoRAs, false matches
among the distinct ones, lookup time among 100,000 fingerprints against linear Python loops, and the cost of
fingerprinting a full SDXL LoRA against materialising every ΔW.

The record holds the 20 fixture LoRAs' fingerprints, each flagged (a blocklist entry); the index also holds
N synthetic fingerprints (random unit vectors: at scale only the coarse matrix scan depends on N). Every
transformed copy is looked up with the gate's own RepeatScreen.find: the index's cut, then the exact re-rank.

    python -m benchmarks.near_duplicates [--synthetic 100000] [--queries 200] [--sdxl-rank 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fixtures.lora_transforms import TRANSFORMS, write_transforms
from gate.config import IntakeLimits, load_settings
from gate.intake import inspect_file
from gate.record.db import open_db
from gate.registry import blocklist
from gate.repeat.screen import RepeatScreen, fingerprint_inspected, store
from gate.repeat.weightprint import GLOBAL_DIMS, compare

LORAS = sorted((Path(__file__).resolve().parent.parent / "fixtures" / "world" / "loras").glob("*.safetensors"))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def _record(workdir: Path, synthetic: int):
    settings = load_settings({"data_dir": str(workdir / "data")})
    db = open_db(settings.db_path)
    prints, hashes = {}, {}
    for path in LORAS:
        inspection = inspect_file(path)
        prints[path.stem] = fingerprint_inspected(inspection, IntakeLimits())
        hashes[path.stem] = inspection.fingerprints.tensor_hash
        store(db, hashes[path.stem], inspection.fingerprints.file_sha256, prints[path.stem])
        blocklist.add(db, hashes[path.stem], "benchmark: flagged", "benchmark")
    screen = RepeatScreen(settings, db)
    screen.refresh()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((synthetic, GLOBAL_DIMS), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    screen.index.add_many([f"synthetic-{i}" for i in range(synthetic)], vectors)
    return settings, screen, prints, hashes, vectors


def recall(workdir: Path, screen: RepeatScreen, hashes: dict[str, str]) -> list[tuple[str, int, int, float, float]]:
    rows = []
    files: dict[str, dict[str, Path]] = {name: {} for name in TRANSFORMS}
    for index, path in enumerate(LORAS):
        for name, written in write_transforms(path, workdir / "copies", LORAS[(index + 1) % len(LORAS)]).items():
            files[name][path.stem] = written
    for name in TRANSFORMS:
        found, worst_similarity, worst_containment = 0, 1.0, 1.0
        for stem, path in files[name].items():
            query = fingerprint_inspected(inspect_file(path), IntakeLimits())
            matches = {m.tensor_hash: m for m in screen.find(query)}
            match = matches.get(hashes[stem])
            if match:
                found += 1
                worst_similarity = min(worst_similarity, match.similarity)
                worst_containment = min(worst_containment, match.containment)
        rows.append((name, found, len(files[name]), worst_similarity, worst_containment))
    return rows


def false_matches(screen: RepeatScreen, prints, hashes) -> tuple[int, int, float, float]:
    false = pairs = 0
    for stem, print_ in prints.items():
        others = [m for m in screen.find(print_) if m.tensor_hash != hashes[stem]]
        false += len(others)
        pairs += len(prints) - 1
    worst_similarity = max(abs(compare(a, b).similarity) for a, b in itertools.permutations(prints.values(), 2))
    worst_containment = max(compare(a, b).containment for a, b in itertools.permutations(prints.values(), 2))
    return false, pairs, worst_similarity, worst_containment


def lookups(screen: RepeatScreen, prints, vectors: np.ndarray, queries: int) -> dict[str, tuple[float, float]]:
    """(median, fastest) seconds per lookup: the index's scan, the gate's whole find, two linear Python loops.

    The fastest run is reported too because the development machine's 2 cores are shared: a median there
    measures the neighbours as much as the code."""
    rng = np.random.default_rng(1)
    real = list(prints.values())
    picks = [real[i % len(real)] for i in range(queries)]
    cut = screen.settings.repeat.candidates
    timings: dict[str, list[float]] = {"index": [], "find": [], "numpy rows": [], "pure python": []}
    for print_ in picks:
        start = time.perf_counter()
        screen.index.search(print_.vector, cut)
        timings["index"].append(time.perf_counter() - start)
        start = time.perf_counter()
        screen.find(print_)
        timings["find"].append(time.perf_counter() - start)
    for print_ in picks[: max(3, queries // 40)]:  # a loop over rows, one numpy dot each
        start = time.perf_counter()
        query = print_.vector
        hits = [i for i, row in enumerate(vectors) if float(np.dot(row, query)) >= cut]
        timings["numpy rows"].append(time.perf_counter() - start)
        del hits
    rows = vectors.tolist()
    for print_ in picks[:2]:  # the plainest loop: Python floats throughout
        query = print_.vector.tolist()
        start = time.perf_counter()
        hits = [i for i, row in enumerate(rows) if sum(a * b for a, b in zip(row, query, strict=True)) >= cut]
        timings["pure python"].append(time.perf_counter() - start)
        del hits
    del rng
    return {name: (statistics.median(values), min(values)) for name, values in timings.items()}


def sdxl_cost(workdir: Path, rank: int) -> tuple[float, float, int, float]:
    """(fingerprint seconds, materialising-ΔW seconds, modules, file MB) for an SDXL LoRA with every module."""
    from safetensors.numpy import save_file

    from fixtures.intake_corpus import kohya_metadata, lora_tensors
    from gate.repeat.weightprint import _projection, decode

    path = workdir / "sdxl.safetensors"
    save_file(lora_tensors("sdxl-full", "kohya", rank=rank, seed=1), path, metadata=kohya_metadata("sdxl", "b", rank))
    inspection = inspect_file(path)
    start = time.perf_counter()
    fingerprint_inspected(inspection, IntakeLimits())
    sketched = time.perf_counter() - start
    start = time.perf_counter()
    with open(path, "rb") as stream:  # the careless way: every ΔW in full, then the same sketch
        for module in inspection.layout.modules:
            tensors = {}
            for role in ("down", "up"):
                info = module.tensors[role]
                stream.seek(inspection.header.data_start + info.begin)
                tensors[role] = decode(info.dtype, stream.read(info.nbytes), info.shape)
            down = tensors["down"].reshape(tensors["down"].shape[0], -1)
            up = tensors["up"].reshape(tensors["up"].shape[0], -1)
            delta = up @ down
            _projection(delta.shape[0], "out").T @ delta @ _projection(delta.shape[1], "in")
    materialised = time.perf_counter() - start
    return sketched, materialised, len(inspection.layout.modules), path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sdxl-rank", type=int, default=8, help="0 skips the SDXL fingerprint cost")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gate-neardup-"))
    try:
        settings, screen, prints, hashes, vectors = _record(workdir, args.synthetic)
        limits = dataclasses.asdict(settings.repeat)
        print(f"\nindex: {len(screen.index):,} fingerprints ({len(prints)} fixture LoRAs, flagged; "
              f"{args.synthetic:,} synthetic), thresholds {limits}\n")
        print("| transformation | found | of | min similarity | min containment |")
        print("|---|---|---|---|---|")
        total = found_all = 0
        for name, found, count, similarity, containment in recall(workdir, screen, hashes):
            total, found_all = total + count, found_all + found
            print(f"| {name} | {found} | {count} | {similarity:.3f} | {containment:.3f} |")
        print(f"| **all** | {found_all} | {total} | | |")
        false, pairs, worst_similarity, worst_containment = false_matches(screen, prints, hashes)
        print(f"\nfalse matches among distinct fixture LoRAs: {false} of {pairs} ordered pairs; max similarity "
              f"{worst_similarity:.3f} (threshold {settings.repeat.similarity}), max containment "
              f"{worst_containment:.3f} (threshold {settings.repeat.containment})\n")
        timings = lookups(screen, prints, vectors, args.queries)
        base = timings["numpy rows"][0]
        print(f"lookup among {len(screen.index):,} fingerprints, {args.queries} queries (loops: fewer); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print("| lookup | median ms | fastest ms | median speed vs numpy-row loop |")
        print("|---|---|---|---|")
        for name, label in (("pure python", "linear loop, pure Python floats (baseline)"),
                            ("numpy rows", "linear loop, one np.dot per row (baseline)"),
                            ("index", "index: one matrix-vector product + partial sort"),
                            ("find", "RepeatScreen.find: index + flagged check + exact re-rank")):
            median, fastest = timings[name]
            print(f"| {label} | {_ms(median)} | {_ms(fastest)} | {base / median:.1f}x |")
        if args.sdxl_rank:
            sketched, materialised, modules, size = sdxl_cost(workdir, args.sdxl_rank)
            print(f"\nfingerprint of an SDXL kohya LoRA, rank {args.sdxl_rank}, {modules} modules, {size:.0f} MB:\n")
            print("| method | seconds | speed |")
            print("|---|---|---|")
            print(f"| every ΔW materialised, then sketched (baseline) | {materialised:.3f} | 1.0x |")
            print(f"| sketched factors (Hᵀ·up)·(down·G), the gate | {sketched:.3f} | {materialised / sketched:.1f}x |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
