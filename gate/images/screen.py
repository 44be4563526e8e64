"""Screening a set of images end to end, given an image embedder: read, embed in batches, match, judge.
The caller brings the embedder (a probe worker's, or the CLI's own), so nothing here imports torch.

Images are screened with the image embedder (settings.image_embedder), each as its views (probes/views.py);
two identities follow: the references' vectors are the embedder's, the screened images' vectors and the image
thresholds are the embedder's with the views (`ImageIds`)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from sqlite_utils import Database

from gate.detection.matching import References
from gate.detection.screening import find_names
from gate.errors import GateError
from gate.images.bundle import Bundle
from gate.images.consensus import CONSENSUS
from gate.images.screening import ImageThresholds, SetVerdict, judge_set
from gate.registry.characters import embed_missing, list_characters, load_references, registry_fingerprint
from probes.contract import embedder_id
from probes.views import REFERENCE_CROPS, REFERENCE_VIEW_COUNT, reference_views_id, view_boxes, views_id

Embed = Callable[[list[np.ndarray]], np.ndarray]
BATCH = 64  # images embedded at once: the embedder's batch, and what a worker holds decoded at a time


class ImageCalibrationMissing(GateError):
    code = "calibration_missing"


@dataclass(frozen=True)
class ImageIds:
    references: str  # the image embedder's with the reference views: registered references' vectors
    vectors: str  # ... and with the images' views: screened images' vectors, and the image thresholds


def image_ids(settings) -> ImageIds:
    reference = reference_views_id(embedder_id(settings.image_embedder))
    return ImageIds(reference, views_id(reference))


_loaded: OrderedDict[tuple, References] = OrderedDict()  # (database file, registry fingerprint): the latest few
_lock = threading.Lock()
KEEP_LOADED = 2  # two record files in one process (tests, a migration) without reloading each time


def image_references(db: Database, reference_id: str) -> References:
    """The registered references' image vectors: each reference's views, one row each (with its path). Kept
    in this process while the registry's fingerprint stands: a worker screening set after set reads a registry
    of thousands of characters (hundreds of thousands of view rows) once, not once a set."""
    file = next((row[2] for row in db.execute("pragma database_list") if row[1] == "main"), "")
    if not file:  # an in-memory database has no name to key it by
        return load_references(db, reference_id, views=REFERENCE_VIEW_COUNT)
    key = (file, *registry_fingerprint(db, reference_id))
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    references = load_references(db, reference_id, views=REFERENCE_VIEW_COUNT)
    references.vectors.flags.writeable = False  # shared by every set screened while it stands
    with _lock:
        _loaded[key] = references
        for stale in [k for k in _loaded if k[0] == file and k != key]:  # an older state of the same registry
            del _loaded[stale]
        while len(_loaded) > KEEP_LOADED:
            _loaded.popitem(last=False)
    return references


class ImageSide(Protocol):
    """What screening needs of an image embedder (probes.embed.ImageScreeningEmbedder, or gate.engines' lazy
    one): references and images each as their views (probes/views.py), and the two identities."""

    reference_id: str
    vectors_id: str

    def references(self, images: list[np.ndarray]) -> np.ndarray: ...

    def images(self, images: list[np.ndarray]) -> np.ndarray: ...


def load_image_thresholds(path: Path, vectors_id: str) -> ImageThresholds:
    """The image thresholds in a calibration file (its `images` section), which must be for these image vectors
    (`ImageIds.vectors`)."""
    try:
        section = json.loads(path.read_text())["images"]
        thresholds = ImageThresholds.from_dict(section["thresholds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageCalibrationMissing(f"no image thresholds in {path} ({exc}); run `gate calibrate --images`") \
            from None
    if section.get("embedder") != vectors_id:
        raise ImageCalibrationMissing(f"{path}'s image thresholds are for embedder {section.get('embedder')}, "
                                      f"not {vectors_id}; run `gate calibrate --images`", "calibration_stale")
    if thresholds.consensus != CONSENSUS:  # fitted on scores of another kind: the threshold means another thing
        raise ImageCalibrationMissing(f"{path}'s image thresholds were fitted on scores averaging "
                                      f"{thresholds.consensus} reference view(s), not up to {CONSENSUS}; run "
                                      "`gate calibrate --images`", "calibration_stale")
    return thresholds


def embed_images(bundle: Bundle, embed: Embed) -> np.ndarray:
    """Every image's vector, BATCH at a time (decoded only while its batch is embedded)."""
    vectors = [embed([item.image.rgb() for item in bundle.items[start:start + BATCH]])
               for start in range(0, len(bundle.items), BATCH)]
    return np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)


def matched_region(view: int, width: int, height: int) -> list[int] | None:
    """The part of an image that matched, as [left, top, right, bottom] pixels; None for the whole image."""
    boxes = view_boxes(width, height)
    return list(boxes[view]) if 0 < view < len(boxes) else None


def reference_region(references: References, row: int) -> list[int] | None:
    """The part of a reference sheet that an image matched (its row in the references' vectors, where each
    reference holds `references.views` rows, the whole first), as [left, top, right, bottom] pixels; None for
    the whole sheet, for a crop that stood in for it (probes.views.floored), or a sheet no longer readable."""
    view = row % references.views
    if view == 0 or np.array_equal(references.vectors[row], references.vectors[row - view]):
        return None
    try:
        with Image.open(references.paths[row]) as sheet:  # the header alone: its size
            width, height = sheet.size
    except (OSError, ValueError, IndexError, Image.DecompressionBombError):
        return None
    return list(view_boxes(width, height, REFERENCE_CROPS)[view])


@dataclass
class Screened:
    bundle: Bundle
    verdict: SetVerdict
    references: References  # what the set was matched against (image_references)
    names: dict[str, str]
    seconds: dict[str, float]

    @property
    def reference_paths(self) -> tuple[str, ...]:
        return self.references.paths

    def to_dict(self) -> dict:
        by_index = {m.index: m for m in self.verdict.matches}
        images = []
        for i, item in enumerate(self.bundle.items):
            entry = {"name": item.name, "sha256": item.image.sha256, "matched": None}
            if (m := by_index.get(i)) is not None:
                entry["matched"] = {"character": m.character_id, "name": self.names.get(m.character_id),
                                    "score": round(m.score, 4), "strong": m.strong,
                                    "reference": Path(self.reference_paths[m.reference]).name,
                                    "region": matched_region(m.view, item.image.width, item.image.height),
                                    "reference_region": reference_region(self.references, m.reference)}
            images.append(entry)
        return {"verdict": self.verdict.verdict, "reasons": self.verdict.reasons, "images": images,
                "refused": self.bundle.refused,
                "counts": {"images": len(self.bundle.items), "refused": len(self.bundle.refused),
                           "matched": len(self.verdict.matches)},
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def screen_images(bundle: Bundle, side: ImageSide, db: Database, thresholds: ImageThresholds) -> Screened:
    """Judge a set of images against the registry, embedding here (references without vectors first)."""
    started = time.perf_counter()
    embed_missing(db, side.references, side.reference_id)
    vectors = embed_images(bundle, side.images)
    return judge_bundle(bundle, vectors, db, side.reference_id, thresholds,
                        {"embed": time.perf_counter() - started})


def judge_bundle(bundle: Bundle, vectors: np.ndarray, db: Database, reference_id: str, thresholds: ImageThresholds,
                 seconds: dict[str, float] | None = None) -> Screened:
    """Judge a set whose images are embedded already (`vectors`, in the order of bundle.items) against the
    references' vectors of `reference_id`."""
    started = time.perf_counter()
    references = image_references(db, reference_id)
    characters = {c.id: c for c in list_characters(db)}
    names = {cid: c.name for cid, c in characters.items()}
    captions = [item.caption for item in bundle.items if item.caption]
    hits = find_names({"caption": captions}, {c.id: c.names for c in characters.values()}) if captions else []
    verdict = judge_set(vectors, references, thresholds, {cid: c.policy for cid, c in characters.items()}, names,
                        hits, [item.image.sha256 for item in bundle.items])
    return Screened(bundle, verdict, references, names,
                    {**(seconds or {}), "judge": time.perf_counter() - started})
