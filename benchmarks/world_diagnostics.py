"""Why the fixture world's character-LoRA hit rates sit under the builder's 0.90 bar (issue 4): two measurements
with the builder's own scoring (`fixtures.worldgen.measure`: a render hits when its embedding is nearest its
character's references among all characters).

1. The embedder's ceiling: fresh procedural drawings of each character, drawn as its training images are, with
   no model in between. A LoRA cannot hit more often than its character's own drawings do.
2. Any-prompt LoRAs and guidance: each LoRA trained to draw its character for any caption, scored on the
   builder's probe prompts at the builder's guidance (the manifest's number, the baseline in this run) and at
   lower guidance; and on the empty prompt without guidance, which is what classifier-free guidance subtracts.
3. The reference sheet: the same drawings, and every character LoRA's probe renders, scored against the first n
   references of each character drawn as the builder draws them (the shipped sheet, the baseline, is the
   first of these); a longer sheet lifts the ceiling, and this shows whether it lifts the LoRAs too.

    python -m benchmarks.world_diagnostics [--drawings 60] [--sheets 8 16 32 64]
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace

import numpy as np
from safetensors.torch import load_file

from fixtures.worldgen.characters import load_characters, reference_images
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
    parser.add_argument("--sheets", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="references per character to compare (the shipped count first)")
    args = parser.parse_args()
    paths = WorldPaths(REPO_ROOT / "fixtures")
    manifest = load_manifest(paths)
    settings = PROFILES[manifest["settings"].get("profile", "full")]
    embedder = load_embedder(paths.embedder)
    index = ReferenceIndex.from_manifest(manifest, paths, *embedder)

    print(f"\nThe embedder's ceiling: {args.drawings} fresh drawings of each character, nearest character\n")
    print(f"| {'character':<14} | {'own':>5} | most often mistaken for |")
    print(f"|{'-' * 16}|{'-' * 7}|{'-' * 25}|")
    drawings = {}
    for character in load_characters():
        images, _ = render_pool(lambda rng, c=character: character_scene(rng, c, None), args.drawings, 7)
        drawings[character.id] = images
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
    at_builder = {}  # the probe renders at the builder's guidance, which the sheet table scores again
    for entry in manifest["loras"]:
        if entry["trigger"] or not entry["character"]:
            continue
        pipeline.load_lora_weights(load_file(paths.resolve(entry["path"])), adapter_name="probe")
        at_builder[entry["id"]] = render(pipeline, *probe_batch(None, seeds), settings)
        rates = [hit_rate(index, at_builder[entry["id"]], entry["character"])] + [
            hit_rate(index, render(pipeline, *probe_batch(None, seeds), replace(settings, guidance_scale=g)),
                     entry["character"]) for g in GUIDANCE]
        count = len(PROBE_PROMPTS) * len(seeds)  # as many renders, each at its own seed
        empty = render(pipeline, [""] * count, list(range(MEASURE_SEED_BASE, MEASURE_SEED_BASE + count)),
                       replace(settings, guidance_scale=1.0))
        pipeline.delete_adapters("probe")
        cells = " | ".join(f"{rate:>7.2f}" for rate in rates[1:])
        unconditional = hit_rate(index, empty, entry["character"])
        print(f"| {entry['id']:<24} | {rates[0]:>7.2f} | {cells} | {unconditional:>10.2f} |", flush=True)

    sheet_table(manifest, paths, settings, embedder, drawings, pipeline, at_builder, args.sheets)


def sheet_table(manifest: dict, paths: WorldPaths, settings, embedder, drawings: dict, pipeline,
                rendered: dict[str, np.ndarray], sizes: list[int]) -> None:
    """Ceiling and LoRA hit rates against longer reference sheets (the first of `sizes` is the baseline);
    `rendered`: LoRAs' probe renders made already, by id; the others are rendered here."""
    characters = {c.id: c for c in load_characters()}
    longest = replace(settings, references_per_character=max(sizes))
    sheets = {c["id"]: reference_images(characters[c["id"]], longest) for c in manifest["characters"]}
    ids, registered = [c["id"] for c in manifest["characters"]], [c["registered"] for c in manifest["characters"]]
    indexes = {n: ReferenceIndex(ids, registered, [sheets[i][:n] for i in ids], *embedder) for n in sizes}
    seeds = range(MEASURE_SEED_BASE, MEASURE_SEED_BASE + settings.measure_seeds)
    renders = {}
    for entry in (e for e in manifest["loras"] if e["character"]):
        if entry["id"] not in rendered:
            pipeline.load_lora_weights(load_file(paths.resolve(entry["path"])), adapter_name="probe")
            rendered[entry["id"]] = render(pipeline, *probe_batch(entry["trigger"], seeds), settings)
            pipeline.delete_adapters("probe")
        renders[entry["id"]] = (entry["character"], rendered[entry["id"]])
    print(f"\nThe reference sheet: nearest their own character against the first n references of each ({sizes[0]} "
          f"shipped, the baseline); drawings as above, character LoRAs on the probe prompts (with the trigger where "
          f"there is one)\n")
    print(f"| {'references':>10} | {'drawings mean':>13} | {'drawings worst':>14} | {'LoRAs mean':>10} | "
          f"{'LoRAs worst':>11} |")
    print(f"|{'-' * 12}|{'-' * 15}|{'-' * 16}|{'-' * 12}|{'-' * 13}|")
    for n, index in indexes.items():
        own = [hit_rate(index, images, cid) for cid, images in drawings.items()]
        loras = [hit_rate(index, images, cid) for cid, images in renders.values()]
        print(f"| {n:>10} | {np.mean(own):>13.3f} | {min(own):>14.2f} | {np.mean(loras):>10.3f} | "
              f"{min(loras):>11.2f} |", flush=True)


if __name__ == "__main__":
    main()
