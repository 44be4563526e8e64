"""Screening images against registries of thousands of characters: the time and memory of reading the
references' vectors and matching one set, as the registry grows, against the way before 2026-12-07 in the same run.

The registry is synthetic (random unit vectors; what is measured does not depend on what they show): --refs
references a character, each stored as its REFERENCE_VIEW_COUNT views of --dim numbers (768: CLIP ViT-L/14's),
in the record's own tables. A set is --images images of VIEW_COUNT views each. Per size:

- reading: the baseline reads every view of every reference into a list and stacks it (two copies at the peak);
  the gate fills one array as the rows arrive (gate.registry.characters.load_references), and a second set
  screened while the registry stands reads nothing (gate.images.screen.image_references);
- matching: the baseline takes every (view, reference view) similarity of the set at once, and scores the
  single best pair; "all views" does the same a block of references at a time (its memory bounded by
  SIMILARITY_BYTES), and must give the baseline's answers; the gate scores by its rule (gate.images.screening.
  scores: the consensus of a few reference views, gate.images.consensus), view by view only with the SHORTLIST
  characters nearest by their sheets whole.

Peak memory is what numpy allocated during the step (tracemalloc), not the process's resident size.

Then what the shortlist changes on real pictures: the fixture world's held-back drawings and negatives matched
against its 11 characters and --distractors characters drawn by the world's generator (embedded with the image
embedder, as references are), with and without the shortlist: every image whose match (character, at the
calibrated score) differs is counted.

    GATE_PROFILE=demo python -m benchmarks.image_registry_scaling [--sizes 100,1000,10000] [--images 64]
        [--distractors 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from gate.detection.matching import References
from gate.images.consensus import CONSENSUS
from gate.images.screen import image_references
from gate.images.screening import ImageThresholds, nearest, scores
from gate.record.db import open_db
from gate.registry.characters import load_references
from probes.views import REFERENCE_VIEW_COUNT, VIEW_COUNT

EMBEDDER = "synthetic@1+reference-views-v1"
# The gate's rule, as its calibration sets it: the consensus, and the single pair that scores alone
RULE = ImageThresholds(0.0, 0.0, 0.01, consensus=CONSENSUS, pair_block_score=1.0)


def registry(path: Path, characters: int, refs: int, dim: int, rng) -> None:
    """A record whose registry holds `characters` active characters of `refs` embedded references each."""
    db = open_db(path)
    now = "2026-12-07T00:00:00+00:00"
    db["characters"].insert_all(({"id": f"c{i:05d}", "name": f"Character {i}", "aliases": "[]", "rights_holder": "x",
                                  "policy": "quarantine", "status": "active", "description": "", "created_at": now,
                                  "updated_at": now} for i in range(characters)), batch_size=1000)
    for start in range(0, characters * refs, 4000):
        rows = range(start, min(start + 4000, characters * refs))
        db["character_references"].insert_all({"id": r + 1, "character_id": f"c{r // refs:05d}", "path": f"/{r}.png",
                                               "sha256": hashlib.sha256(str(r).encode()).hexdigest(), "width": 512,
                                               "height": 512, "created_at": now} for r in rows)
        vectors = rng.normal(size=(len(rows), REFERENCE_VIEW_COUNT, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
        db["reference_embeddings"].insert_all(({"reference_id": r + 1, "embedder": EMBEDDER, "vector": v.tobytes()}
                                               for r, v in zip(rows, vectors, strict=True)))
    db.conn.close()


def baseline_load(db, embedder_id: str, views: int) -> References:
    """How references were read before 2026-12-07: a list of every view, then stacked."""
    vectors, owners, paths, ids = [], [], [], {}
    for row in db.query(
            "select r.character_id, r.path, e.vector from reference_embeddings e "
            "join character_references r on r.id = e.reference_id join characters c on c.id = r.character_id "
            "where e.embedder = ? and c.status = 'active' order by r.character_id, r.id", [embedder_id]):
        owner = ids.setdefault(row["character_id"], len(ids))
        for vector in np.frombuffer(row["vector"], np.float32).reshape(views, -1):
            owners.append(owner)
            vectors.append(vector)
            paths.append(row["path"])
    return References(tuple(ids), np.stack(vectors), np.array(owners), tuple(paths))


def baseline_nearest(vectors: np.ndarray, references: References):
    """How a set was matched before 2026-12-07: all its similarities at once."""
    views = np.asarray(vectors, np.float32).reshape(len(vectors), -1, references.vectors.shape[1])
    similarity = (views @ references.vectors.T).max(axis=1)
    row = similarity.argmax(axis=1)
    return references.owners[row], similarity[np.arange(len(vectors)), row], row


def measured(step, *args):
    """(step(*args), seconds, peak MB allocated during the step)."""
    tracemalloc.start()
    mark = time.perf_counter()
    result = step(*args)
    seconds = time.perf_counter() - mark
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--refs", type=int, default=4, help="references a character")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--images", type=int, default=64, help="images in the set")
    parser.add_argument("--distractors", type=int, default=1000, help="generated characters beside the world's "
                        "in the shortlist's agreement table (0: no table)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="image-registry-"))
    images = rng.normal(size=(args.images, VIEW_COUNT, args.dim)).astype(np.float32)
    images = (images / np.linalg.norm(images, axis=-1, keepdims=True)).reshape(args.images, -1)

    print(f"{args.refs} references a character, {REFERENCE_VIEW_COUNT} views each, {args.dim} dimensions; a set of "
          f"{args.images} images of {VIEW_COUNT} views\n")
    print("| characters | reference views | read: baseline s / MB | read: gate s / MB | read again (gate) s | "
          "match: baseline s / MB | match: all views s / MB | match: gate s / MB | time ratio (read + match, "
          "first set) | time ratio (match) | memory ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        path = work / f"registry-{size}.db"
        registry(path, size, args.refs, args.dim, rng)
        db = open_db(path)
        old, old_read, old_read_mb = measured(baseline_load, db, EMBEDDER, REFERENCE_VIEW_COUNT)
        (old_owner, old_score, _), old_match, old_match_mb = measured(baseline_nearest, images, old)
        del old
        new, new_read, new_read_mb = measured(image_references, db, EMBEDDER)
        _, again, _ = measured(image_references, db, EMBEDDER)
        (owner, score, _), all_match, all_match_mb = measured(nearest, images, new, 0)
        assert (owner == old_owner).all() and np.allclose(score, old_score, atol=1e-5)  # the same answers
        _, new_match, new_match_mb = measured(scores, images, new, RULE)
        assert len(new.vectors) == len(load_references(db, EMBEDDER, REFERENCE_VIEW_COUNT).vectors)
        print(f"| {size:,} | {len(new.vectors):,} | {old_read:.2f} / {old_read_mb:,.0f} | {new_read:.2f} / "
              f"{new_read_mb:,.0f} | {again:.3f} | {old_match:.2f} / {old_match_mb:,.0f} | {all_match:.2f} / "
              f"{all_match_mb:,.0f} | {new_match:.2f} / {new_match_mb:,.0f} | "
              f"{(old_read + old_match) / (new_read + new_match):.1f}x | {old_match / new_match:.1f}x | "
              f"{max(old_read_mb, old_match_mb) / max(new_read_mb, new_match_mb):.1f}x |", flush=True)
        db.conn.close()
        path.unlink()
    if args.distractors:
        agreement(work, args.distractors)


def agreement(work: Path, count: int) -> None:
    """Matches with and without the shortlist, on the world's held-back pictures and `count` distractors."""
    from benchmarks.registry_scaling import REFERENCES, distractors
    from fixtures import image_truth
    from gate.config import load_settings
    from gate.engines import LazyImageEmbedder
    from gate.images.bundle import read_bundle
    from gate.images.screen import embed_images, load_image_thresholds
    from gate.images.screening import SHORTLIST
    from gate.registry.characters import embed_missing
    from gate.registry.world import World, seed_registry

    settings = load_settings({"data_dir": str(work / "world")})
    db = open_db(settings.db_path)
    seed_registry(db, World.load(settings.world_dir), settings.references_dir)
    side = LazyImageEmbedder(settings)
    embed_missing(db, side.references, side.reference_id)
    world = image_references(db, side.reference_id)
    _, fake = distractors(work, count, side.references)
    fake = fake.reshape(-1, world.vectors.shape[1])
    owners = np.concatenate([world.owners, len(world.character_ids) + np.repeat(np.arange(count),
                                                                                REFERENCES * REFERENCE_VIEW_COUNT)])
    registry = References(world.character_ids + tuple(f"generated_{k:05d}" for k in range(count)),
                          np.concatenate([world.vectors, fake]), owners, views=REFERENCE_VIEW_COUNT)
    entries = image_truth.load(split="held_back")
    vectors = embed_images(read_bundle([e["path"] for e in entries]), side.images)
    labels = [e["character"] if e["kind"] == "character" else None for e in entries]
    thresholds = load_image_thresholds(settings.calibration_file, side.vectors_id)
    (exact_owner, exact, _), exact_s, _ = measured(scores, vectors, registry, thresholds, 0)
    (owner, score, _), short_s, _ = measured(scores, vectors, registry, thresholds)

    def matched(o, s):
        return [registry.character_ids[c] if v >= thresholds.score else None for c, v in zip(o, s, strict=True)]

    before, after = matched(exact_owner, exact), matched(owner, score)
    differ = sum(a != b for a, b in zip(before, after, strict=True))
    right = [sum(m == label for m, label in zip(found, labels, strict=True) if label) for found in (before, after)]
    print(f"\n{len(entries)} held-back pictures ({sum(map(bool, labels))} drawings of registered characters), "
          f"{len(registry.character_ids):,} characters ({count:,} drawn by the world's generator), "
          f"shortlist {SHORTLIST}\n")
    print("| matching | seconds | drawings matched to their character | pictures whose match differs from all views |")
    print("| --- | --- | --- | --- |")
    print(f"| all views | {exact_s:.2f} | {right[0]} | - |")
    print(f"| shortlist (the gate) | {short_s:.2f} | {right[1]} | {differ} |")


if __name__ == "__main__":
    main()
