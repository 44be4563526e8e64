"""Screening a set of images end to end, given an embed function: read, embed in batches, match, judge.
The caller brings the embedder (a probe worker's, or the CLI's own), so nothing here imports torch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.detection.screening import find_names
from gate.errors import GateError
from gate.images.bundle import Bundle
from gate.images.screening import ImageThresholds, SetVerdict, judge_set
from gate.registry.characters import embed_missing, list_characters, load_references

Embed = Callable[[list[np.ndarray]], np.ndarray]
BATCH = 64  # images embedded at once: the embedder's batch, and what a worker holds decoded at a time


class ImageCalibrationMissing(GateError):
    code = "calibration_missing"


def load_image_thresholds(path: Path, embedder_id: str) -> ImageThresholds:
    """The image thresholds in a calibration file (its `images` section), which must be for this embedder."""
    try:
        section = json.loads(path.read_text())["images"]
        thresholds = ImageThresholds.from_dict(section["thresholds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageCalibrationMissing(f"no image thresholds in {path} ({exc}); run `gate calibrate --images`") \
            from None
    if section.get("embedder") != embedder_id:
        raise ImageCalibrationMissing(f"{path}'s image thresholds are for embedder {section.get('embedder')}, "
                                      f"not {embedder_id}; run `gate calibrate --images`", "calibration_stale")
    return thresholds


def embed_images(bundle: Bundle, embed: Embed) -> np.ndarray:
    """Every image's vector, BATCH at a time (decoded only while its batch is embedded)."""
    vectors = [embed([item.image.rgb() for item in bundle.items[start:start + BATCH]])
               for start in range(0, len(bundle.items), BATCH)]
    return np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)


@dataclass
class Screened:
    bundle: Bundle
    verdict: SetVerdict
    reference_paths: tuple[str, ...]
    names: dict[str, str]
    seconds: dict[str, float]

    def to_dict(self) -> dict:
        by_index = {m.index: m for m in self.verdict.matches}
        images = []
        for i, item in enumerate(self.bundle.items):
            entry = {"name": item.name, "sha256": item.image.sha256, "matched": None}
            if (m := by_index.get(i)) is not None:
                entry["matched"] = {"character": m.character_id, "name": self.names.get(m.character_id),
                                    "score": round(m.score, 4), "strong": m.strong,
                                    "reference": Path(self.reference_paths[m.reference]).name}
            images.append(entry)
        return {"verdict": self.verdict.verdict, "reasons": self.verdict.reasons, "images": images,
                "refused": self.bundle.refused,
                "counts": {"images": len(self.bundle.items), "refused": len(self.bundle.refused),
                           "matched": len(self.verdict.matches)},
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def screen_images(bundle: Bundle, embed: Embed, db: Database, embedder_id: str,
                  thresholds: ImageThresholds) -> Screened:
    """Judge a set of images against the registry, embedding here (references without vectors first)."""
    started = time.perf_counter()
    embed_missing(db, embed, embedder_id)
    vectors = embed_images(bundle, embed)
    return judge_bundle(bundle, vectors, db, embedder_id, thresholds,
                        {"embed": time.perf_counter() - started})


def judge_bundle(bundle: Bundle, vectors: np.ndarray, db: Database, embedder_id: str, thresholds: ImageThresholds,
                 seconds: dict[str, float] | None = None) -> Screened:
    """Judge a set whose images are embedded already (`vectors`, in the order of bundle.items)."""
    started = time.perf_counter()
    references = load_references(db, embedder_id)
    characters = {c.id: c for c in list_characters(db)}
    names = {cid: c.name for cid, c in characters.items()}
    captions = [item.caption for item in bundle.items if item.caption]
    hits = find_names({"caption": captions}, {c.id: c.names for c in characters.values()}) if captions else []
    verdict = judge_set(vectors, references, thresholds, {cid: c.policy for cid, c in characters.items()}, names,
                        hits)
    return Screened(bundle, verdict, references.paths, names,
                    {**(seconds or {}), "judge": time.perf_counter() - started})
