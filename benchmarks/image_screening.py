"""Screening images on the fixture world's held-back drawings (never tuned on): per image and per training set,
and the embedding throughput batched against one image at a time.

Six ways of embedding and scoring, each calibrated in this run the way `gate calibrate --images` does (on the
tuning split's negatives), so they compare on equal terms. The baseline is how images were screened until
2026-12-07: the render embedder, each image whole. The shipped way is the image embedder, each image's views
against each reference's views (probes/views.py), scored by the consensus of a few reference views
(gate.images.consensus); beside it the same scored by the single best pair. Two tables then show how the view
schemes were chosen, on the tuning split, and one how many reference views the consensus averages, on a
selection split drawn in memory (--selection-per-character drawings of each character, --selection-generic
negatives).

    GATE_PROFILE=demo python -m benchmarks.image_screening [--trials 500] [--throughput 256]
        [--selection-per-character 60] [--selection-generic 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import numpy as np

from fixtures import image_truth
from gate.config import load_settings
from gate.detection.matching import References
from gate.engines import LazyImageEmbedder, lazy_embedder
from gate.images.bundle import read_bundle
from gate.images.calibration import fit_image_thresholds, world_negatives
from gate.images.consensus import CONSENSUS
from gate.images.screen import embed_images, image_references, load_image_thresholds
from gate.images.screening import ImageThresholds, judge_set, scores
from gate.record.db import open_db
from gate.registry.characters import embed_missing, list_characters, load_references, reference_files
from gate.registry.images import check_image
from gate.registry.world import World, seed_registry
from probes.contract import embedder_id as identify
from probes.embed import ImageEmbedder
from probes.views import floored, image_views


def _per_image(vectors, labels, references, thresholds: ImageThresholds) -> tuple[float, float, float]:
    owner, score, _ = scores(vectors, references, thresholds)
    named = np.array([references.character_ids[o] for o in owner])
    matched = score >= thresholds.score
    positive = np.array([label is not None for label in labels])
    right = named == np.array([label or "" for label in labels])
    recall = float((matched & right)[positive].mean())
    strong = float(((score >= thresholds.block_score) & right)[positive].mean())
    false = float(matched[~positive].mean())
    return recall, strong, false


def _sets(vectors, labels, originals, references, thresholds, policies, names, trials: int, size: int,
          share: float, rng) -> tuple[float, float, float]:
    """(caught: sets with `share` of one character's drawings flagged for it; false: clean sets of negatives
    flagged; one original: clean sets holding every drawing of one unregistered original, the rest negatives,
    flagged). Images are drawn without repeats, as a training set holds them."""
    positive = [i for i, label in enumerate(labels) if label is not None]
    negative = [i for i, label in enumerate(labels) if label is None]
    by_character: dict[str, list[int]] = {}
    for i in positive:
        by_character.setdefault(labels[i], []).append(i)
    characters, designs = sorted(by_character), sorted(originals)
    caught = flagged = alike = 0
    drawn = max(1, round(size * share))

    def judged(picks):
        return judge_set(vectors[picks], references, thresholds, policies, names, keys=[str(i) for i in picks])

    for _ in range(trials):
        character = characters[int(rng.integers(len(characters)))]
        picks = list(rng.choice(by_character[character], drawn, replace=False)) + list(
            rng.choice(negative, size - drawn, replace=False))
        caught += any(r.get("character") == character and r["kind"] == "image_match" for r in judged(picks).reasons)
        flagged += judged(list(rng.choice(negative, size, replace=False))).verdict != "allow"
        own = originals[designs[int(rng.integers(len(designs)))]]
        excluded = set(own)
        rest = [i for i in negative if i not in excluded]
        alike += judged(own + list(rng.choice(rest, size - len(own), replace=False))).verdict != "allow"
    return caught / trials, flagged / trials, alike / trials


def _ways(settings, db) -> list[tuple[str, object, object, int]]:
    """(label, embed function, references, consensus) for each way, the baseline first."""
    render_embed, render_id = lazy_embedder(settings), identify(settings.embedder)
    embed_missing(db, render_embed, render_id)
    side = LazyImageEmbedder(settings)
    embed_missing(db, side.references, side.reference_id)
    whole_embed, whole_id = _whole_embedder(settings), identify(settings.image_embedder)
    embed_missing(db, whole_embed, whole_id)
    render_refs, whole_refs = load_references(db, render_id), load_references(db, whole_id)

    def render_views(images):
        return render_embed([v for image in images for v in image_views(image)]).reshape(len(images), -1)

    views = image_references(db, side.reference_id)
    return [("baseline: render embedder, whole image", render_embed, render_refs, 1),
            ("render embedder, views", render_views, render_refs, 1),
            ("image embedder, whole image", whole_embed, whole_refs, 1),
            ("image embedder, views, whole references", side.images, whole_refs, 1),
            ("image embedder, views, reference views, best pair", side.images, views, 1),
            ("image embedder, views, reference views, consensus (shipped)", side.images, views, CONSENSUS)]


def _whole_embedder(settings):
    """The image embedder on whole images, one vector each."""
    return ImageEmbedder(settings.image_embedder, settings.device or None).embed


def _tuning_split():
    tuning = image_truth.load(split="tuning")
    return (read_bundle([e["path"] for e in tuning]),
            [e["character"] if e["kind"] == "character" else None for e in tuning])


def _scheme_recall(embed, references, splits: dict) -> dict:
    """Per-image (recall, strong, false positives) on each split, the thresholds fitted on the tuning negatives."""
    vectors = {name: embed_images(bundle, embed) for name, (bundle, _) in splits.items()}
    negatives = vectors["tuning"][[label is None for label in splits["tuning"][1]]]
    thresholds = fit_image_thresholds(negatives, references, ["tuning negatives"], consensus=1)
    return {name: _per_image(vectors[name], labels, references, thresholds) for name, (_, labels) in splits.items()}


SCHEMES = (((), 1), ((0.5,), 2), ((0.5,), 3), ((0.6,), 3), ((0.5, 0.75), 2), ((0.5, 0.75), 3))
REFERENCE_SCHEMES = (((), 1), ((0.75,), 2), ((0.75,), 3), ((0.75,), 4), ((0.6,), 3), ((0.7,), 3), ((0.85,), 3))


def _scheme_label(crops, grid) -> str:
    return "the whole" + "".join(f" + {grid}x{grid} crops of {c}" for c in crops)


def _views_table(settings, db, held_labels, held) -> None:
    """Per-image recall by the views an image is cut into (the image embedder, references whole), and then by
    the views a reference is cut into (images as shipped), on the tuning split, where the shipped schemes were
    chosen; the held-back split beside it."""
    side = LazyImageEmbedder(settings)
    whole = _whole_embedder(settings)
    whole_refs = load_references(db, identify(settings.image_embedder))
    splits = {"tuning": _tuning_split(), "held back": (held, held_labels)}
    print("\n| views of an image (references whole) | count | tuning recall | (held back) | per-image false positives |"
          "\n| --- | --- | --- | --- | --- |")
    for crops, grid in SCHEMES:
        def embed(images, crops=crops, grid=grid):
            return whole([v for image in images for v in image_views(image, crops, grid)]).reshape(len(images), -1)

        recall = _scheme_recall(embed, whole_refs, splits)
        print(f"| {_scheme_label(crops, grid)} | {1 + len(crops) * grid * grid} | {recall['tuning'][0]:.3f} | "
              f"({recall['held back'][0]:.3f}) | {recall['held back'][2]:.3f} |")
    print("\n| views of a reference (images' views as shipped) | count | tuning recall | (held back) | strong "
          "(held back) | per-image false positives |\n| --- | --- | --- | --- | --- | --- |")
    references = [(cid, [check_image(path).rgb() for path, _ in files]) for cid, files in reference_files(db).items()]
    for crops, grid in REFERENCE_SCHEMES:
        stacked = {cid: np.concatenate([floored(whole(image_views(image, crops, grid))) for image in images])
                   for cid, images in references}
        recall = _scheme_recall(side.images, References.stack(stacked), splits)
        print(f"| {_scheme_label(crops, grid)} | {1 + len(crops) * grid * grid} | {recall['tuning'][0]:.3f} | "
              f"({recall['held back'][0]:.3f}) | {recall['held back'][1]:.3f} | {recall['held back'][2]:.3f} |")


def _first_sheets(references: References, sheets: int) -> References:
    """The registry as if each character had registered only its first `sheets` references."""
    position = np.arange(len(references.owners)) - np.searchsorted(references.owners, references.owners)
    keep = position < sheets * references.views
    return References(references.character_ids, references.vectors[keep], references.owners[keep],
                      tuple(np.asarray(references.paths, object)[keep]) if references.paths else (), references.views)


CONSENSUS_ROWS = (1, 2, 4, 6, 8, 10)
SHEETS = (1, 2, 4, 8)


def _consensus_table(side, references, negatives, held, held_labels, per_character: int, generic: int) -> None:
    """Per-image recall by the most reference views a score averages (gate.images.consensus; 1: the best pair),
    with each character's first 1, 2, 4 or 8 sheets: on a selection split drawn in memory for the choice, and
    on the held-back split beside it. Thresholds fitted on the tuning negatives for each cell."""
    selection = image_truth.drawings(image_truth.SELECTION, per_character=per_character, generic=generic)
    labels = [entry["character"] if entry["kind"] == "character" else None for entry, _ in selection]
    chosen = np.concatenate([side.images([image for _, image in selection[start:start + 256]])
                             for start in range(0, len(selection), 256)])
    tuning, kept = embed_images(negatives, side.images), embed_images(held, side.images)
    print(f"\nConsensus: the selection split, {sum(map(bool, labels))} drawings and {labels.count(None)} negatives, "
          "drawn in memory; (the held-back split); per-image false positives on the selection split\n")
    print("| most reference views averaged | " + " | ".join(f"{n} sheet{'s' * (n > 1)}" for n in SHEETS) +
          " | false positives (8 sheets) |\n| --- |" + " --- |" * (len(SHEETS) + 1))
    for consensus in CONSENSUS_ROWS:
        cells, false = [], 0.0
        for sheets in SHEETS:
            registry = _first_sheets(references, sheets)
            thresholds = fit_image_thresholds(tuning, registry, ["tuning negatives"], consensus=consensus)
            recall, _, false = _per_image(chosen, labels, registry, thresholds)
            cells.append(f"{recall:.3f} ({_per_image(kept, held_labels, registry, thresholds)[0]:.3f})")
        label = "1 (the best pair)" if consensus == 1 else str(consensus)
        label = f"**{label} (shipped)**" if consensus == CONSENSUS else label
        print(f"| {label} | " + " | ".join(cells) + f" | {false:.4f} |")


def _count_table(args, vectors, labels, originals, references, thresholds, policies, names) -> None:
    """The shipped way's sets judged by two count rules, the same sets for both: each character's count against
    the whole false rate (the baseline, until 2026-12-07), and against its share of it (shipped)."""
    print(f"\nCounting a set's matches (the shipped embedding; {args.trials} trials of {args.set_size} images a "
          f"row; one original: its {min(map(len, originals.values()))} or more held-back drawings with negatives)\n")
    print("| count rule | sets caught, 5% one character | 3% | clean sets flagged | one original's sets flagged |")
    print("| --- | --- | --- | --- | --- |")
    for label, rule in (("baseline: every character against the whole rate", replace(thresholds, near_misses=None)),
                        ("each character against its share (shipped)", thresholds)):
        rng = np.random.default_rng(1)
        caught, flagged, alike = _sets(vectors, labels, originals, references, rule, policies, names, args.trials,
                                       args.set_size, 0.05, rng)
        fewer, _, _ = _sets(vectors, labels, originals, references, rule, policies, names, args.trials,
                            args.set_size, 0.03, rng)
        print(f"| {label} | {caught:.3f} | {fewer:.3f} | {flagged:.3f} | {alike:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--set-size", type=int, default=100)
    parser.add_argument("--throughput", type=int, default=256, help="images embedded in the throughput test")
    parser.add_argument("--selection-per-character", type=int, default=60)
    parser.add_argument("--selection-generic", type=int, default=2000)
    args = parser.parse_args()
    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="image-bench-")})
    db = open_db(settings.db_path)
    seed_registry(db, World.load(settings.world_dir), settings.references_dir)
    characters = {c.id: c for c in list_characters(db)}
    policies, names = {k: c.policy for k, c in characters.items()}, {k: c.name for k, c in characters.items()}

    entries = image_truth.load(split="held_back")
    bundle = read_bundle([e["path"] for e in entries])
    negatives = read_bundle(world_negatives(settings.world_dir))
    assert not bundle.refused and not negatives.refused, (bundle.refused, negatives.refused)
    labels = [e["character"] if e["kind"] == "character" else None for e in entries]
    originals: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        if e["kind"] == "original":
            originals.setdefault(e["character"], []).append(i)
    shipped = load_image_thresholds(settings.calibration_file, LazyImageEmbedder(settings).vectors_id)

    print(f"held-back images: {sum(label is not None for label in labels)} drawings of "
          f"{len(set(filter(None, labels)))} registered characters, {labels.count(None)} negatives "
          f"(generic scenes, unregistered originals); thresholds fitted on {len(negatives.items)} tuning negatives\n")
    print("| embedding | per-image recall | strong | per-image false positives | sets caught "
          f"({args.set_size} images, 5% one character) | clean sets flagged |")
    print("| --- | --- | --- | --- | --- | --- |")
    ways = _ways(settings, db)
    for label, embed, references, consensus in ways:
        thresholds = fit_image_thresholds(embed_images(negatives, embed), references, ["tuning negatives"],
                                          consensus=consensus)
        vectors = embed_images(bundle, embed)
        recall, strong, false = _per_image(vectors, labels, references, thresholds)
        caught, flagged, _ = _sets(vectors, labels, originals, references, thresholds, policies, names,
                                   args.trials, args.set_size, 0.05, np.random.default_rng(0))
        print(f"| {label} (score {thresholds.score:.3f}, strong {thresholds.block_score:.3f}) | {recall:.3f} | "
              f"{strong:.3f} | {false:.3f} | {caught:.3f} | {flagged:.3f} |")
    # the last way is the shipped one: its sets counted both ways
    _count_table(args, vectors, labels, originals, references, thresholds, policies, names)
    print(f"\nThe shipped calibration (fixtures/world/calibration.json): score {shipped.score:.3f}, strong "
          f"{shipped.block_score:.3f}.")
    _views_table(settings, db, labels, bundle)
    side = LazyImageEmbedder(settings)
    _consensus_table(side, image_references(db, side.reference_id), negatives, bundle, labels,
                     args.selection_per_character, args.selection_generic)

    images = [item.image.rgb() for item in (bundle.items * (1 + args.throughput // len(bundle.items)))][
        : args.throughput]
    print(f"\n| embedding {len(images)} images | images/s | ratio to one at a time |\n| --- | --- | --- |")
    for label, embed, *_ in (ways[0], ways[-1]):
        embed(images[:8])  # loaded and warm before either is timed
        mark = time.perf_counter()
        for one in images:
            embed([one])
        single = time.perf_counter() - mark
        mark = time.perf_counter()
        for start in range(0, len(images), 64):
            embed(images[start:start + 64])
        batched = time.perf_counter() - mark
        print(f"| {label}: one at a time | {len(images) / single:.0f} | 1.0x |")
        print(f"| {label}: batched, 64 at a time | {len(images) / batched:.0f} | {single / batched:.1f}x |")


if __name__ == "__main__":
    main()
