"""Back-catalogue screening: a newly registered character against stored probe embeddings of 100,000 LoRAs.

Synthetic embeddings at the fixture world's scale (64-dimensional vectors, 36 renders per LoRA: 24 generic probes
whose base renders every LoRA shares, 12 template probes of its own), a registry of 11 characters with 8
references each, and a new character that 20 planted LoRAs draw. Compared in the same run:

- baseline: the live matcher run LoRA by LoRA in a Python loop over the stored vectors (score both render sets
  against every reference, apply the matching rule), as screening would be without an index;
- the gate: the resident index's vectorised search (int8 render vectors with a bounded rounding error, a centroid
  bound, then the character's references) for renders that could match the new character, then the same live
  rule on those candidates only.

Both must find the same LoRAs. Time is the median of --repeat runs; memory is the peak traced allocation during
a screening (tracemalloc sees numpy's buffers) and the index's resident size.

    python -m benchmarks.catalogue_screening [--loras 100000] [--baseline-loras 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from gate.catalogue.index import CatalogueIndex
from gate.detection.matching import References, Thresholds, match_characters, score

THRESHOLDS = Thresholds(render_score=0.86, lift=0.0, quarantine_matches=3, block_matches=4, block_score=0.9)


def _unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_catalogue(loras: int, dim: int, generic: int, own: int, planted: int, seed: int = 0):
    """Stored vectors for `loras` LoRAs; the first `planted` draw the new character in 4 renders."""
    rng = np.random.default_rng(seed)
    registry = _unit(rng.normal(size=(11 * 8, dim)))
    new_character = _unit(rng.normal(size=(1, dim)) + 0.15 * rng.normal(size=(8, dim)))
    generic_base = _unit(rng.normal(size=(generic, dim)))
    renders = generic + own
    lora = np.empty((loras, renders, dim), np.float16)
    base = np.empty((loras, renders, dim), np.float16)
    for start in range(0, loras, 10_000):
        stop = min(loras, start + 10_000)
        n = stop - start
        own_base = _unit(rng.normal(size=(n, own, dim)))
        chunk_base = np.concatenate([np.broadcast_to(generic_base, (n, generic, dim)), own_base], axis=1)
        base[start:stop] = chunk_base
        lora[start:stop] = _unit(chunk_base + 0.6 * rng.normal(size=(n, renders, dim)))
    for i in range(planted):
        lora[i, :4] = _unit(new_character[rng.integers(0, 8, 4)] + 0.05 * rng.normal(size=(4, dim)))
    references = References.stack({**{f"c{c}": registry[c * 8:(c + 1) * 8] for c in range(11)},
                                   "new": new_character})
    return lora, base, references


def baseline_screen(lora: np.ndarray, base: np.ndarray, references: References, character: str) -> list[int]:
    """The live matcher, LoRA by LoRA."""
    found = []
    for i in range(len(lora)):
        lora_scores, base_scores = score(lora[i].astype(np.float32), references), score(base[i].astype(np.float32),
                                                                                         references)
        if any(m.character_id == character and m.matched >= THRESHOLDS.quarantine_matches
               for m in match_characters(lora_scores, base_scores, references, THRESHOLDS)):
            found.append(i)
    return found


def gate_screen(index: CatalogueIndex, lora: np.ndarray, base: np.ndarray, references: References,
                character: str) -> list[int]:
    """The index's search, then the live rule on the candidates (their vectors, as read from the record)."""
    c = references.character_ids.index(character)
    candidates = index.candidates(references.vectors[references.owners == c], THRESHOLDS)
    found = []
    for upload_id in candidates:
        i = int(upload_id)
        lora_scores, base_scores = score(lora[i].astype(np.float32), references), score(base[i].astype(np.float32),
                                                                                         references)
        if any(m.character_id == character and m.matched >= THRESHOLDS.quarantine_matches
               for m in match_characters(lora_scores, base_scores, references, THRESHOLDS)):
            found.append(i)
    return sorted(found)


def _measure(function, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loras", type=int, default=100_000)
    parser.add_argument("--baseline-loras", type=int, default=None,
                        help="LoRAs the baseline loop runs over (default: all); fewer is extrapolated linearly")
    parser.add_argument("--dim", type=int, default=64, help="embedding width (the fixture embedder's is 64)")
    parser.add_argument("--generic", type=int, default=24, help="generic probes per LoRA (shared base renders)")
    parser.add_argument("--own", type=int, default=12, help="template probes per LoRA (its own base renders)")
    parser.add_argument("--planted", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    mark = time.perf_counter()
    lora, base, references = synthetic_catalogue(args.loras, args.dim, args.generic, args.own, args.planted)
    print(f"synthetic catalogue: {args.loras:,} LoRAs x {lora.shape[1]} renders x {args.dim} dims "
          f"({time.perf_counter() - mark:.1f} s to make)")
    mark = time.perf_counter()
    index = CatalogueIndex("embedder@synthetic")
    for start in range(0, args.loras, 10_000):
        stop = min(args.loras, start + 10_000)
        index.add([str(i) for i in range(start, stop)], list(lora[start:stop]), list(base[start:stop]))
    build = time.perf_counter() - mark
    print(f"index built in {build:.1f} s: {index.nbytes / 2**20:.0f} MiB resident "
          f"({len(index.lora):,} LoRA renders, {len(index.base):,} distinct base renders)")

    gate_time, gate_peak, gate_found = _measure(lambda: gate_screen(index, lora, base, references, "new"),
                                                args.repeat)
    sample = min(args.loras, args.baseline_loras or args.loras)
    base_time, base_peak, base_found = _measure(
        lambda: baseline_screen(lora[:sample], base[:sample], references, "new"), 1)
    planted_in_sample = [i for i in gate_found if i < sample]
    assert base_found == planted_in_sample, (base_found, planted_in_sample)
    assert gate_found == list(range(args.planted)), gate_found
    scale = args.loras / sample
    estimated = " (extrapolated)" if sample < args.loras else ""
    print()
    print("| method | LoRAs | time | peak traced memory | found |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| per-LoRA Python loop (baseline) | {sample:,} | {base_time:.2f} s; {base_time * scale:.2f} s for "
          f"{args.loras:,}{estimated} | {base_peak / 2**20:.1f} MiB | {len(base_found)} |")
    print(f"| resident int8 index, vectorised | {args.loras:,} | {gate_time:.3f} s (median of {args.repeat}) | "
          f"{gate_peak / 2**20:.1f} MiB (+ {index.nbytes / 2**20:.0f} MiB index) | {len(gate_found)} |")
    print(f"\nspeed-up: {base_time * scale / gate_time:.0f}x; target <= 1 s: "
          f"{'met' if gate_time <= 1 else 'missed'}")


if __name__ == "__main__":
    main()
