"""Why the fixture world's character-LoRA hit rates sit under the builder's 0.90 bar (issue 4): two measurements
with the builder's own scoring (`fixtures.worldgen.measure`: a render hits when its embedding is nearest its
character's references among all characters).

1. The embedder's ceiling: fresh procedural drawings of each character, drawn as its training images are, with
   no model in between. A LoRA cannot hit more often than its character's own drawings do.
2. Any-prompt LoRAs and guidance: each LoRA trained to draw its character for any caption, scored on the
   builder's probe prompts at the builder's guidance (the manifest's number, the baseline in this run) and at
   lower guidance; and on the empty prompt without guidance, which is what classifier-free guidance subtracts.

    python -m benchmarks.world_diagnostics [--drawings 60]
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace

import numpy as np
from safetensors.torch import load_file

from fixtures.worldgen.characters import load_characters
from fixtures.worldgen.data import render_pool
from fixtures.worldgen.embedding import load_embedder
from fixtures.worldgen.loras import character_scene
from fixtures.worldgen.manifest import WorldPaths, load_manifest
from fixtures.worldgen.measure import MEASURE_SEED_BASE, PROBE_PROMPTS, ReferenceIndex, probe_batch, render
from fixtures.worldgen.settings import PROFILES, REPO_ROOT
from fixtures.worldgen.train_base import load_pipeline

GUIDANCE = (4.0, 2.0, 1.0)


def hit_rate(index: ReferenceIndex, images: np.ndarray, character: str) -> float:
    return float(np.mean([n == character for n in index.nearest(index.character_scores(images))]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drawings", type=int, default=60, help="procedural drawings per character")
    args = parser.parse_args()
    paths = WorldPaths(REPO_ROOT / "fixtures")
    manifest = load_manifest(paths)
    settings = PROFILES[manifest["settings"].get("profile", "full")]
    index = ReferenceIndex(manifest, paths, *load_embedder(paths.embedder))

    print(f"\nThe embedder's ceiling: {args.drawings} fresh drawings of each character, nearest character\n")
    print(f"| {'character':<14} | {'own':>5} | most often mistaken for |")
    print(f"|{'-' * 16}|{'-' * 7}|{'-' * 25}|")
    for character in load_characters():
        images, _ = render_pool(lambda rng, c=character: character_scene(rng, c, None), args.drawings, 7)
        nearest = Counter(index.nearest(index.character_scores(images)))
        others = ", ".join(f"{name} {count}" for name, count in nearest.most_common() if name != character.id)
        print(f"| {character.id:<14} | {nearest[character.id] / args.drawings:>5.2f} | {others[:60] or '-'} |")

    pipeline = load_pipeline(paths.base)
    seeds = range(MEASURE_SEED_BASE, MEASURE_SEED_BASE + settings.measure_seeds)
    builder = settings.guidance_scale
    print(f"\nAny-prompt character LoRAs: hit rate on {len(PROBE_PROMPTS)} probe prompts x {len(seeds)} seeds at the "
          f"builder's guidance {builder} (the baseline) and lower; and on the empty prompt without guidance\n")
    header = " | ".join(f"{f'g {g}':>7}" for g in GUIDANCE)
    print(f"| {'LoRA':<24} | {f'g {builder}':>7} | {header} | {'empty, g 1':>10} |")
    print(f"|{'-' * 26}|{'-' * 9}|" + "|".join("-" * 9 for _ in GUIDANCE) + f"|{'-' * 12}|")
    for entry in manifest["loras"]:
        if entry["trigger"] or not entry["character"]:
            continue
        pipeline.load_lora_weights(load_file(paths.resolve(entry["path"])), adapter_name="probe")
        rates = [hit_rate(index, render(pipeline, *probe_batch(None, seeds), replace(settings, guidance_scale=g)),
                          entry["character"]) for g in (builder, *GUIDANCE)]
        count = len(PROBE_PROMPTS) * len(seeds)  # as many renders, each at its own seed
        empty = render(pipeline, [""] * count, list(range(MEASURE_SEED_BASE, MEASURE_SEED_BASE + count)),
                       replace(settings, guidance_scale=1.0))
        pipeline.delete_adapters("probe")
        cells = " | ".join(f"{rate:>7.2f}" for rate in rates[1:])
        unconditional = hit_rate(index, empty, entry["character"])
        print(f"| {entry['id']:<24} | {rates[0]:>7.2f} | {cells} | {unconditional:>10.2f} |", flush=True)


if __name__ == "__main__":
    main()
