"""Where an SD 1.5-sized probe's time goes on a GPU, and what two levers buy (a GPU benchmark).

The same random SD 1.5-shaped models and LoRAs as `benchmarks.sd15_probe`, through the production
Renderer and ImageEmbedder. Per LoRA, timed with the device synchronised between parts: reading the file
and swapping the adapter in, the denoising loop and the VAE decode (the pipeline call), embedding, and
deleting the adapter. Rows: the sd15-v1 probe set as shipped (the baseline, measured in the same run),
the UNet and VAE in channels_last memory format, and fewer denoising steps.

    python -m benchmarks.sd15_breakdown [--loras 3] [--work DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.sd15_probe import PROBE_SET, _sync, build_models, write_loras
from probes.embed import ImageEmbedder
from probes.probe_set import load_probe_set
from probes.render import Renderer

PARTS = ("load + swap", "pipeline", "embed", "delete")


def _mark(marks: list[float]) -> None:
    _sync()
    marks.append(time.perf_counter())


def one_lora(renderer: Renderer, embedder: ImageEmbedder, probe_set, probes, path: Path) -> list[float]:
    """Seconds for each of PARTS for one LoRA."""
    marks: list[float] = []
    _mark(marks)
    with renderer.lora(load_file(path)):
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
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base_dir, embedder_dir = build_models(args.work, args.tiny, args.device)
    loras = write_loras(args.work, base_dir, args.loras + 1)
    shipped = load_probe_set(PROBE_SET)
    if args.tiny:
        shipped = replace(shipped, width=64, height=64, steps=4)
    probes = [probe for probe in shipped.probes({}) if probe.source == "generic"]
    renderer = Renderer(base_dir, args.device)
    embedder = ImageEmbedder(embedder_dir, args.device)
    batch = replace(shipped, batch_size=len(probes))

    variants = [
        ("sd15-v1 as shipped (baseline)", batch, False),
        ("channels_last UNet and VAE", batch, True),
        (f"{batch.steps * 3 // 4} steps", replace(batch, steps=batch.steps * 3 // 4), False),
        (f"{batch.steps * 3 // 4} steps, channels_last", replace(batch, steps=batch.steps * 3 // 4), True),
        (f"{batch.steps // 2} steps, channels_last", replace(batch, steps=batch.steps // 2), True),
    ]
    rows = []
    for label, probe_set, channels_last in variants:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        renderer.pipe.unet.to(memory_format=memory_format)
        renderer.pipe.vae.to(memory_format=memory_format)
        one_lora(renderer, embedder, probe_set, probes, loras[0])  # warm-up: kernels, allocator
        timed = [one_lora(renderer, embedder, probe_set, probes, path) for path in loras[1:]]
        rows.append((label, [statistics.median(part) for part in zip(*timed, strict=True)]))

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\nSD 1.5-sized probe, {len(probes)} generic probes in one batch, {shipped.scheduler}, guidance "
          f"{shipped.guidance}, {shipped.width}x{shipped.height}, on {device_name}, torch {torch.__version__}; "
          f"median of {len(loras) - 1} LoRAs after a warm-up\n")
    header = " | ".join(f"{part:>11}" for part in PARTS)
    print(f"| {'variant':<32} | {header} | {'total s':>7} | {'vs baseline':>11} |")
    print(f"|{'-' * 34}|" + "|".join("-" * 13 for _ in PARTS) + f"|{'-' * 9}|{'-' * 13}|")
    baseline = sum(rows[0][1])
    for label, parts in rows:
        cells = " | ".join(f"{seconds:>11.3f}" for seconds in parts)
        print(f"| {label:<32} | {cells} | {sum(parts):>7.2f} | {baseline / sum(parts):>10.2f}x |")


if __name__ == "__main__":
    main()
