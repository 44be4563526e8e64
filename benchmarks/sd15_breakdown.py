"""Where an SD 1.5-sized probe's time goes on a GPU, and what the probe set's choices cost (a GPU benchmark).

The same random SD 1.5-shaped models and LoRAs as `benchmarks.sd15_probe`, through the production
Renderer and ImageEmbedder. Per LoRA, timed with the device synchronised between parts: reading the file
and swapping the adapter in, the denoising loop and the VAE decode (the pipeline call), embedding, and
deleting the adapter. Rows, in one run: sd15-v1 (the baseline) and the newest sd15 set, each for its
generic probes and for its expansion for a LoRA with a trigger, tags and a name; sd15-v1 with the base
model alone (what the adapter's layers cost); then the likelihood probe per LoRA against a registry of
`--characters` with each set's [likelihood] table. Measured on an H100 on 2026-11-26 and no longer rows:
channels_last (0.90x) and cuDNN's autotuner (0.93x), both slower; the VAE decode of 20 latents, 0.30 s.

    python -m benchmarks.sd15_breakdown [--loras 3] [--characters 100] [--work DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.sd15_probe import PROBE_SET, TERMS, _sync, build_models, likelihood_rows, write_loras
from probes.embed import ImageEmbedder
from probes.probe_set import SETS_DIR, load_probe_set
from probes.render import Renderer

PARTS = ("load + swap", "pipeline", "embed", "delete")


def _mark(marks: list[float]) -> None:
    _sync()
    marks.append(time.perf_counter())


def one_lora(renderer: Renderer, embedder: ImageEmbedder, probe_set, probes, path: Path | None) -> list[float]:
    """Seconds for each of PARTS for one LoRA (None: the base model alone, nothing swapped)."""
    marks: list[float] = []
    _mark(marks)
    with renderer.lora(load_file(path)) if path else contextlib.nullcontext():
        _mark(marks)
        images = renderer.render(probes, probe_set)
        _mark(marks)
        embedder.embed(images)
        _mark(marks)
    _mark(marks)
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=int, default=3, help="LoRAs timed per row, after one warm-up")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15_probe"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a small model of the same architecture (CPU check)")
    parser.add_argument("--characters", type=int, default=100, help="registry size for the likelihood rows (0: none)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base_dir, embedder_dir = build_models(args.work, args.tiny, args.device)
    loras = write_loras(args.work, base_dir, args.loras + 1)
    baseline, newest = (load_probe_set(path) for path in (SETS_DIR / "sd15-v1.toml", PROBE_SET))
    if args.tiny:
        baseline, newest = (replace(s, width=64, height=64, steps=4) for s in (baseline, newest))
    renderer = Renderer(base_dir, args.device)
    embedder = ImageEmbedder(embedder_dir, args.device)

    def row(label: str, probe_set, terms: dict, with_lora: bool = True) -> tuple[str, int, list[float]]:
        probes = probe_set.probes(terms)
        probe_set = replace(probe_set, batch_size=len(probes))  # one batch: the H100 is not full at 40
        one_lora(renderer, embedder, probe_set, probes, loras[0])  # warm-up: kernels, allocator
        timed = [one_lora(renderer, embedder, probe_set, probes, path if with_lora else None) for path in loras[1:]]
        return label, len(probes), [statistics.median(part) for part in zip(*timed, strict=True)]

    first, last = baseline.id, newest.id
    rows = [row(f"{first}, generic (baseline)", baseline, {}),
            row(f"{first}, generic, base alone", baseline, {}, with_lora=False),
            row(f"{last}, generic", newest, {}),
            row(f"{first}, expanded", baseline, TERMS),
            row(f"{last}, expanded", newest, TERMS)]

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\nSD 1.5-sized probe per LoRA, {baseline.width}x{baseline.height}, each row's probes in one batch, on "
          f"{device_name}, torch {torch.__version__}; median of {len(loras) - 1} LoRAs after a warm-up. {first}: "
          f"{baseline.steps} steps; {last}: {newest.steps} steps; 'expanded': with a trigger, three tags, a name and "
          f"{len(TERMS['registry'])} registered characters\n")
    header = " | ".join(f"{part:>11}" for part in PARTS)
    print(f"| {'probe set, probes':<42} | {'renders':>7} | {header} | {'total s':>7} | {'vs baseline':>11} |")
    print(f"|{'-' * 44}|{'-' * 9}|" + "|".join("-" * 13 for _ in PARTS) + f"|{'-' * 9}|{'-' * 13}|")
    reference = sum(rows[0][2])
    for label, count, parts in rows:
        cells = " | ".join(f"{seconds:>11.3f}" for seconds in parts)
        print(f"| {label:<42} | {count:>7} | {cells} | {sum(parts):>7.2f} | {reference / sum(parts):>10.2f}x |")
    if baseline.likelihood and newest.likelihood and args.characters:
        likelihood_rows(renderer, newest, loras, args.work, args.characters, [
            (f"{first} (batch {baseline.likelihood.batch})", baseline.likelihood),
            (f"{last} (batch {newest.likelihood.batch})", newest.likelihood),
        ])


if __name__ == "__main__":
    main()
