"""The back catalogue's memory of what every scanned LoRA draws: each concluded scan's probe embeddings, stored
with its upload (`record_scan`), and a resident index over all of them for screening (`catalogue_index`)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.detection.matching import Thresholds
from gate.errors import GateError
from gate.record.db import writing

VECTOR_DTYPE = np.float16  # half the bytes of float32; similarities move by < 1e-3
CHUNK_ROWS = 1 << 18  # renders converted to float32 at a time while searching (64 MiB at 64 dims)
# The resident index keeps LoRA render vectors as int8 (x * 127, rounded): a quarter of float32, and converted to
# float32 for the search an order of magnitude faster than float16. The rounding error is bounded, and the search
# widens its thresholds by that bound, so it still finds every render the exact rule could match.
QUANT = 127.0


class ScreeningError(GateError):
    code = "screening_failed"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------------------
# Storing what a scan saw


def record_scan(db: Database, upload_id: str, result, embedder_id: str) -> bool:
    """Keep a concluded scan's probe embeddings with its upload (replacing an earlier scan's); False when the
    scan rendered nothing (refused, blocklisted, not probed): then only its base family is kept."""
    inspection = result.inspection
    if not inspection.ok:
        return False
    outcome = result.outcome
    row = {"upload_id": upload_id, "embedder": embedder_id, "base_family": inspection.family.family,
           "probe_set": result.probe_set, "renders": 0, "dim": 0, "lora_vectors": b"", "base_vectors": b"",
           "probes": "[]", "created_at": _now()}
    if outcome is not None:
        lora = np.ascontiguousarray(outcome.lora_embeddings, dtype=VECTOR_DTYPE)
        base = np.ascontiguousarray(outcome.base_embeddings, dtype=VECTOR_DTYPE)
        row.update(probe_set=outcome.probe_set_id, renders=int(lora.shape[0]), dim=int(lora.shape[1]),
                   lora_vectors=lora.tobytes(), base_vectors=base.tobytes(),
                   probes=json.dumps([{"prompt": p.prompt, "seed": p.seed, "source": p.source}
                                      for p in outcome.probes], ensure_ascii=False))
    with writing(db):
        db.execute("delete from catalogue_scans where upload_id = ?", [upload_id])
        db["catalogue_scans"].insert(row)
    return outcome is not None


def stored_vectors(db: Database, upload_id: str) -> tuple[np.ndarray, np.ndarray, list[dict]] | None:
    """One upload's stored (lora, base) render vectors as float32, and its probes; None when none are stored."""
    rows = list(db.query("select renders, dim, lora_vectors, base_vectors, probes from catalogue_scans "
                         "where upload_id = ? and renders > 0", [upload_id]))
    if not rows:
        return None
    row = rows[0]
    shape = (row["renders"], row["dim"])
    return (np.frombuffer(row["lora_vectors"], VECTOR_DTYPE).reshape(shape).astype(np.float32),
            np.frombuffer(row["base_vectors"], VECTOR_DTYPE).reshape(shape).astype(np.float32),
            json.loads(row["probes"]))


# ---------------------------------------------------------------------------------------------------------
# The resident index


@dataclass
class CatalogueIndex:
    """Every stored render of one embedder, stacked: LoRA vectors (float16), and the distinct base vectors they
    are compared with (base renders repeat across LoRAs: the generic probes are the same for all)."""

    embedder: str
    dim: int = 0
    upload_ids: list[str] = field(default_factory=list)
    lora: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8))  # (n, d) round(x * QUANT)
    base_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (n,) into base
    base: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), VECTOR_DTYPE))  # (b, d) distinct
    owners: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (n,) into upload_ids
    live: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (n,) False once replaced
    last_id: int = 0
    _slots: dict[str, int] = field(default_factory=dict)

    @property
    def loras(self) -> int:
        return len(self._slots)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.lora, self.base_rows, self.base, self.owners, self.live))

    def add(self, upload_ids: list[str], lora: list[np.ndarray], base: list[np.ndarray]) -> None:
        """Append scans (one (r, d) pair per upload); an upload seen before has its earlier renders retired."""
        if not upload_ids:
            return
        new_lora = np.concatenate(lora).astype(VECTOR_DTYPE, copy=False)
        new_base = np.concatenate(base).astype(VECTOR_DTYPE, copy=False)
        if self.dim == 0:
            self.dim = new_lora.shape[1]
            self.lora, self.base = np.zeros((0, self.dim), np.int8), np.zeros((0, self.dim), VECTOR_DTYPE)
        if new_lora.shape[1] != self.dim:
            raise ScreeningError(f"stored vectors of {new_lora.shape[1]} dimensions in an index of {self.dim}")
        for upload_id in upload_ids:
            if upload_id in self._slots:
                self.live[self.owners == self._slots[upload_id]] = False
        first_slot = len(self.upload_ids)
        self.upload_ids.extend(upload_ids)
        self._slots.update({upload_id: first_slot + i for i, upload_id in enumerate(upload_ids)})
        counts = [len(v) for v in lora]
        owners = np.repeat(np.arange(first_slot, first_slot + len(upload_ids), dtype=np.int32), counts)
        # Distinct base vectors: the same probe's base render has the same bytes in every scan.
        old_count = len(self.base)
        combined = np.concatenate([self.base, new_base])
        distinct, inverse = np.unique(combined.view(np.dtype((np.void, combined.itemsize * self.dim))).ravel(),
                                      return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int32)
        self.base = distinct.view(VECTOR_DTYPE).reshape(-1, self.dim)
        self.base_rows = np.concatenate([inverse[:old_count][self.base_rows], inverse[old_count:]])
        quantised = np.rint(np.clip(new_lora.astype(np.float32), -1, 1) * QUANT).astype(np.int8)
        self.lora = np.concatenate([self.lora, quantised])
        self.owners = np.concatenate([self.owners, owners])
        self.live = np.concatenate([self.live, np.ones(len(new_lora), bool)])

    def refresh(self, db: Database) -> int:
        """Load the scans stored since the last refresh; returns how many."""
        ids, lora, base, last = [], [], [], self.last_id
        for row in db.query("select id, upload_id, renders, dim, lora_vectors, base_vectors from catalogue_scans "
                            "where embedder = ? and id > ? order by id", [self.embedder, self.last_id]):
            last = row["id"]
            if not row["renders"]:
                continue
            shape = (row["renders"], row["dim"])
            ids.append(row["upload_id"])
            lora.append(np.frombuffer(row["lora_vectors"], VECTOR_DTYPE).reshape(shape))
            base.append(np.frombuffer(row["base_vectors"], VECTOR_DTYPE).reshape(shape))
        self.add(ids, lora, base)
        self.last_id = last
        return len(ids)

    def candidates(self, reference_vectors: np.ndarray, thresholds: Thresholds) -> list[str]:
        """Uploads with at least one render that could match a character with these references: as similar as
        the calibrated render score and lifted above its base render by the calibrated lift. A necessary
        condition of the live rule (bounds, not estimates), so judging only these uploads misses none."""
        if not len(self.lora) or not len(reference_vectors):
            return []
        refs = np.asarray(reference_vectors, dtype=np.float32)  # (k, d)
        centre = refs.mean(axis=0)
        spread = float(np.linalg.norm(refs - centre, axis=1).max())
        # |<q - x, r>| <= |q - x| |r|, and each of the d components of q - x is at most 0.5 / QUANT.
        rounding = np.sqrt(self.dim) * 0.5 / QUANT
        error = rounding * float(np.linalg.norm(refs, axis=1).max())
        # A render's best reference similarity is at most <x, centre> + |x| * spread (|x| <= 1 + rounding): one
        # matrix-vector product rules out most renders before the k references are looked at.
        coarse_floor = thresholds.render_score - error - spread * (1 + rounding)
        hit = np.zeros(len(self.lora), bool)
        buffer = np.empty((min(CHUNK_ROWS, len(self.lora)), self.dim), np.float32)  # reused: no page faults
        for start in range(0, len(self.lora), CHUNK_ROWS):
            chunk = self.lora[start:start + CHUNK_ROWS]
            block = buffer[:len(chunk)]
            np.copyto(block, chunk)
            rows = np.flatnonzero(block @ (centre / QUANT) >= coarse_floor)
            if not len(rows):
                continue
            best = (block[rows] @ (refs.T / QUANT)).max(axis=1) + error  # >= the exact best similarity
            rows, best = rows[best >= thresholds.render_score], best[best >= thresholds.render_score]
            base = self.base[self.base_rows[start + rows]].astype(np.float32)
            rows = rows[best - (base @ refs.T).max(axis=1) >= thresholds.lift]
            hit[start + rows] = True
        hit &= self.live
        return [self.upload_ids[slot] for slot in np.unique(self.owners[hit])]


    ARRAYS = ("lora", "base_rows", "base", "owners", "live")

    def save(self, directory: Path) -> None:
        """Write the index beside the record, so the next process maps it instead of reading every scan."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in self.ARRAYS:
            np.save(directory / f"{name}.tmp.npy", getattr(self, name))
        meta = {"embedder": self.embedder, "dim": self.dim, "last_id": self.last_id, "upload_ids": self.upload_ids}
        (directory / "index.tmp.json").write_text(json.dumps(meta))
        for name in self.ARRAYS:
            (directory / f"{name}.tmp.npy").replace(directory / f"{name}.npy")
        (directory / "index.tmp.json").replace(directory / "index.json")  # last: it names what the arrays hold

    @classmethod
    def load(cls, directory: Path, embedder_id: str) -> CatalogueIndex | None:
        """A saved index (its large matrices memory-mapped), or None when there is none or it does not fit."""
        try:
            meta = json.loads((directory / "index.json").read_text())
            arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r" if name in ("lora", "base") else None)
                      for name in cls.ARRAYS}
        except (OSError, ValueError):
            return None
        if meta.get("embedder") != embedder_id or len(arrays["owners"]) != len(arrays["lora"]):
            return None
        index = cls(embedder_id, meta["dim"], meta["upload_ids"], last_id=meta["last_id"], **arrays)
        index._slots = {upload_id: slot for slot, upload_id in enumerate(index.upload_ids)}
        return index


_indexes: dict[tuple[str, str], CatalogueIndex] = {}
_indexes_lock = threading.Lock()


def catalogue_index(db: Database, embedder_id: str) -> CatalogueIndex:
    """The process's resident index for this record and embedder, brought up to date: loaded once (memory-mapped
    from its saved copy beside the record when there is one), then only scans stored since are read."""
    db_path = Path(db.conn.execute("pragma database_list").fetchone()[2]).resolve()
    directory = db_path.parent / "catalogue-index" / hashlib.sha256(embedder_id.encode()).hexdigest()[:16]
    key = (str(db_path), embedder_id)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            index = CatalogueIndex.load(directory, embedder_id)
            newest = db.execute("select coalesce(max(id), 0) from catalogue_scans").fetchone()[0]
            if index is None or index.last_id > newest:  # none saved, or saved from another record
                index = CatalogueIndex(embedder_id)
            _indexes[key] = index
        if index.refresh(db) or not (directory / "index.json").exists():
            index.save(directory)
        return index
