"""Screening images on the fixture world's held-back drawings (never tuned on): per image and per training set,
with the image calibration against a baseline in the same run (the LoRA renders' threshold reused for images),
and the embedding throughput batched against one image at a time.

    GATE_PROFILE=demo python -m benchmarks.image_screening [--trials 500] [--throughput 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from fixtures import image_truth
from gate.config import load_settings
from gate.detection.scanner import load_thresholds
from gate.engines import lazy_embedder
from gate.images.bundle import read_bundle
from gate.images.screen import embed_images, load_image_thresholds
from gate.images.screening import ImageThresholds, judge_set, nearest
from gate.record.db import open_db
from gate.registry.characters import embed_missing, list_characters, load_references
from gate.registry.world import World, seed_registry
from probes.contract import embedder_id as identify
from probes.probe_set import load_probe_set


def _per_image(vectors, labels, references, thresholds: ImageThresholds) -> tuple[float, float, float]:
    owner, score, _ = nearest(vectors, references)
    named = np.array([references.character_ids[o] for o in owner])
    matched = score >= thresholds.score
    positive = np.array([label is not None for label in labels])
    right = named == np.array([label or "" for label in labels])
    recall = float((matched & right)[positive].mean())
    strong = float(((score >= thresholds.block_score) & right)[positive].mean())
    false = float(matched[~positive].mean())
    return recall, strong, false


def _sets(vectors, labels, references, thresholds, policies, names, trials: int, size: int, share: float,
          rng) -> tuple[float, float]:
    """(caught: sets with `share` of one character's drawings flagged for it, false: clean sets flagged)."""
    positive = [i for i, label in enumerate(labels) if label is not None]
    negative = [i for i, label in enumerate(labels) if label is None]
    by_character: dict[str, list[int]] = {}
    for i in positive:
        by_character.setdefault(labels[i], []).append(i)
    characters = sorted(by_character)
    caught = flagged = 0
    drawn = max(1, round(size * share))
    for _ in range(trials):
        character = characters[int(rng.integers(len(characters)))]
        picks = list(rng.choice(by_character[character], drawn)) + list(rng.choice(negative, size - drawn))
        judged = judge_set(vectors[picks], references, thresholds, policies, names)
        caught += any(r.get("character") == character and r["kind"] == "image_match" for r in judged.reasons)
        clean = judge_set(vectors[list(rng.choice(negative, size))], references, thresholds, policies, names)
        flagged += clean.verdict != "allow"
    return caught / trials, flagged / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--set-size", type=int, default=100)
    parser.add_argument("--throughput", type=int, default=256, help="images embedded in the throughput test")
    args = parser.parse_args()
    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="image-bench-")})
    db = open_db(settings.db_path)
    seed_registry(db, World.load(settings.world_dir), settings.references_dir)
    embed, embedder = lazy_embedder(settings), identify(settings.embedder)
    embed_missing(db, embed, embedder)
    references = load_references(db, embedder)
    characters = {c.id: c for c in list_characters(db)}
    policies, names = {k: c.policy for k, c in characters.items()}, {k: c.name for k, c in characters.items()}

    entries = image_truth.load(split="held_back")
    bundle = read_bundle([e["path"] for e in entries])
    assert not bundle.refused, bundle.refused
    vectors = embed_images(bundle, embed)
    labels = [e["character"] if e["kind"] == "character" else None for e in entries]
    image = load_image_thresholds(settings.calibration_file, embedder)
    lora = load_thresholds(settings.calibration_file, load_probe_set(settings.probe_set).id, embedder)
    # The baseline: the LoRA renders' threshold, read as an image threshold (what reusing it would give).
    baseline = ImageThresholds(lora.render_score, max(lora.block_score, lora.render_score),
                               image.false_rate, image.false_positive_target)

    print(f"held-back images: {sum(label is not None for label in labels)} drawings of "
          f"{len(set(filter(None, labels)))} registered characters, {labels.count(None)} negatives "
          f"(generic scenes, unregistered originals)\n")
    print("| thresholds | per-image recall | strong | per-image false positives | sets caught "
          f"({args.set_size} images, 5% one character) | clean sets flagged |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, thresholds in (("image calibration", image), ("baseline: the LoRA render threshold", baseline)):
        recall, strong, false = _per_image(vectors, labels, references, thresholds)
        caught, flagged = _sets(vectors, labels, references, thresholds, policies, names, args.trials,
                                args.set_size, 0.05, np.random.default_rng(0))
        print(f"| {label} (score {thresholds.score:.3f}, strong {thresholds.block_score:.3f}) | {recall:.3f} | "
              f"{strong:.3f} | {false:.3f} | {caught:.3f} | {flagged:.3f} |")

    images = [item.image.rgb() for item in (bundle.items * (1 + args.throughput // len(bundle.items)))][
        : args.throughput]
    embed(images[:8])  # loaded and warm before either is timed
    mark = time.perf_counter()
    for one in images:
        embed([one])
    single = time.perf_counter() - mark
    mark = time.perf_counter()
    for start in range(0, len(images), 64):
        embed(images[start:start + 64])
    batched = time.perf_counter() - mark
    print(f"\n| embedding {len(images)} images | images/s | ratio |\n| --- | --- | --- |")
    print(f"| baseline: one at a time | {len(images) / single:.0f} | 1.0x |")
    print(f"| batched, 64 at a time | {len(images) / batched:.0f} | {single / batched:.1f}x |")


if __name__ == "__main__":
    main()
