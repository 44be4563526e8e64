"""An upload's preview images: kept beside it, embedded by the probe worker with its renders, and judged as a
set under the image thresholds. A preview that shows a registered character is evidence in the upload's
decision (`preview_match`), even where the probes miss."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.detection.decisions import CharacterPolicy, Reason, Verdict
from gate.detection.matching import References
from gate.images.record import known_vectors
from gate.images.screening import judge_set
from gate.registry.images import ImageError, check_image_bytes

log = logging.getLogger(__name__)


def store_previews(previews: list[tuple[str, bytes]], folder: Path) -> list[dict]:
    """Each preview checked as an image and stored by its sha256 (a refused one keeps its code, not its bytes):
    the rows to record with the upload."""
    rows = []
    for position, (name, data) in enumerate(previews):
        try:
            checked = check_image_bytes(data, name)
        except ImageError as exc:
            rows.append({"position": position, "name": name[:200], "sha256": None, "path": None,
                         "refused": exc.code})
            continue
        target = folder / checked.sha256[:2] / f"{checked.sha256}.image"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as spool:
                spool.write(data)
            os.replace(spool.name, target)
        rows.append({"position": position, "name": name[:200], "sha256": checked.sha256, "path": str(target),
                     "refused": None})
    return rows


def previews_of(db: Database, upload_id: str) -> list[dict]:
    return list(db["upload_previews"].rows_where("upload_id = ? and sha256 is not null", [upload_id],
                                                 order_by="position"))


def preview_request(db: Database, upload_id: str, embedder: str) -> list[dict]:
    """The upload's previews the record has no vector for, as a probe worker embeds them (id, path, sha256)."""
    rows = previews_of(db, upload_id)
    known = known_vectors(db, embedder, [row["sha256"] for row in rows])
    return [{"id": row["sha256"], "path": row["path"], "sha256": row["sha256"]}
            for row in {row["sha256"]: row for row in rows if row["sha256"] not in known}.values()]


def preview_reasons(db: Database, upload_id: str, embedder: str, references: References, thresholds,
                    characters: dict[str, CharacterPolicy]) -> list[Reason]:
    """The previews judged as a set: a reason for each character they show, in the upload's decision."""
    rows = previews_of(db, upload_id)
    if not rows or thresholds is None:
        return []
    vectors = known_vectors(db, embedder, [row["sha256"] for row in rows])
    present = [row for row in rows if row["sha256"] in vectors]
    if len(present) < len(rows):
        log.warning("upload %s: %d of its previews have no vector; judged on the rest", upload_id,
                    len(rows) - len(present))
    if not present:
        return []
    judged = judge_set(np.stack([vectors[row["sha256"]] for row in present]), references, thresholds,
                       {cid: str(policy.policy) for cid, policy in characters.items()},
                       {cid: policy.name for cid, policy in characters.items()},
                       keys=[row["sha256"] for row in present])
    return [Reason("preview_match", Verdict(r["verdict"]), f"preview images: {r['message']}", r["character"],
                   {"images": r["images"], "strong": r["strong"], "needed": r["needed"],
                    "previews": [present[m.index]["name"] for m in judged.matches
                                 if m.character_id == r["character"]],
                    # each preview beside the reference it came closest to (its file name: the record keeps
                    # where it is), for the evidence page and the moderator
                    "matched": [{"preview": present[m.index]["name"], "score": round(m.score, 4), "strong": m.strong,
                                 "reference": Path(references.paths[m.reference]).name
                                 if m.reference < len(references.paths) else None}
                                for m in judged.matches if m.character_id == r["character"]]})
            for r in judged.reasons if r["kind"] == "image_match"]


def matched_previews(reasons: list[Reason], references: References) -> dict[str, dict]:
    """Per preview name, what a preview_match reason saw in it: the character, the similarity, and the path
    of the reference it came closest to."""
    paths = {Path(path).name: path for path in references.paths}
    return {m["preview"]: {"shows": reason.character_id, "score": m["score"], "reference_path":
                           paths.get(m["reference"] or "")}
            for reason in reasons for m in reason.details.get("matched", [])}
