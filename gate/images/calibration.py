"""Image-level thresholds, fitted on negative images (generic scenes, unregistered characters, what style LoRAs
draw): none of them shows a registered character, so how similar they come to one is what chance gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gate.detection.matching import References
from gate.images.consensus import CONSENSUS
from gate.images.screening import ImageThresholds, nearest_with_pair

IMAGE_FALSE_RATE = 0.01  # the share of negative images that may match some character
STRONG_MARGIN = 0.01  # a strong match is this much above the most similar negative
NEAR_MISS_SHARE = 0.25  # the negatives most like some character, whose nearest characters share out the rate


def fit_image_thresholds(negatives: np.ndarray, references: References, sources: list[str],
                         false_rate: float = IMAGE_FALSE_RATE, target: float = 1e-3,
                         consensus: int = CONSENSUS) -> ImageThresholds:
    """`score` at the (1 - false_rate) quantile of the negatives' scores (each its nearest character's, averaging
    `consensus` reference views: gate.images.consensus), `block_score` just above their maximum, and
    `pair_block_score` just above their most similar single pair. The measured rate at `score` is what a set's
    count is judged against, shared out over the characters by which one each near miss (the top
    `NEAR_MISS_SHARE` of negatives) came nearest. The near misses stand in for the false matches, which are too
    few to count per character (a 1% rate of 400 negatives is 4)."""
    if len(negatives) < 50:
        raise ValueError(f"{len(negatives)} negative images; calibration needs at least 50 (hundreds are better)")
    owner, best, _, _, pair, _ = nearest_with_pair(negatives, references, consensus=consensus)
    score = float(np.quantile(best, 1.0 - false_rate))
    measured = float(np.mean(best >= score))
    block = min(1.0, float(best.max()) + STRONG_MARGIN)
    pair_block = None if consensus <= 1 else round(min(1.0, float(pair.max()) + STRONG_MARGIN), 4)
    near = owner[best >= np.quantile(best, 1.0 - NEAR_MISS_SHARE)]
    near_misses = {cid: int(n) for cid, n in zip(references.character_ids,
                                                 np.bincount(near, minlength=len(references.character_ids)),
                                                 strict=True)}
    return ImageThresholds(round(score, 4), round(block, 4), round(max(measured, 1.0 / len(best)), 5), target,
                           provenance={"negatives": len(best), "sources": sources,
                                       "quantile": 1.0 - false_rate, "negative_max": round(float(best.max()), 4),
                                       "near_miss_share": NEAR_MISS_SHARE,
                                       "fitted_at": datetime.now(UTC).isoformat(timespec="seconds")},
                           near_misses=near_misses, consensus=consensus,
                           pair_block_score=pair_block)


def world_negatives(world_dir: Path) -> list[Path]:
    """The fixture world's tuning images that show no registered character (generic scenes, originals)."""
    folder = Path(world_dir) / "images"
    entries = json.loads((folder / "images.json").read_text())
    return [folder / e["file"] for e in entries if e["split"] == "tuning" and e["kind"] in ("generic", "original")]


def write_image_calibration(path: Path, thresholds: ImageThresholds, embedder_id: str) -> None:
    """Keep the image thresholds in the calibration file's `images` section (the LoRA thresholds stay)."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["images"] = {"thresholds": thresholds.to_dict(), "embedder": embedder_id}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
