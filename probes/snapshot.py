"""The registry as a probe worker sees it: a versioned, content-addressed snapshot the gate writes and a worker
on any machine reads (from the gate's disk, or fetched once from GET /internal/registry/<version>/<file>).

A snapshot is a directory named for its version with three files:

- `registry.json`: the embedder, and each active character's id, name and policy (`content`), the version, and
  the sha256 of the two arrays;
- `references.npy`: one row per reference image: its character (index into the characters), its sha256, its row
  in `vectors.npy` (-1: not embedded yet) and its path on the gate's disk (for a worker that shares it);
- `vectors.npy`: the references' embeddings, float32, L2-normalised.

The version is the sha256 of `content` and the arrays' digests, so a worker that reads a snapshot checks it is
the one a request names before it concludes anything. The arrays are memory-mapped: a registry of 10,000
characters costs a worker page cache, not Python objects, and the index over the vectors (`nearest`) streams
them in blocks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST, REFERENCES, VECTORS = "registry.json", "references.npy", "vectors.npy"
FILES = (MANIFEST, REFERENCES, VECTORS)
PATH_BYTES = 240  # a longer path is left out: a worker fetches that image by its sha256
REFERENCE_ROW = np.dtype([("owner", "<i4"), ("vector", "<i4"), ("sha256", "S64"), ("path", f"S{PATH_BYTES}")])
BLOCK = 65536  # reference vectors scored at a time


class SnapshotError(Exception):
    """A snapshot that is missing, damaged or not the version asked for."""

    code = "registry_snapshot_invalid"


def file_sha256(path: Path) -> str:
    """A file's sha256, read in chunks (probe workers check every file they are handed with it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def version_of(content: dict, digests: dict[str, str]) -> str:
    canonical = json.dumps({"content": content, "files": digests}, sort_keys=True, separators=(",", ":"))
    return "reg-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


def reference_rows(owners, vector_rows, sha256s, paths) -> np.ndarray:
    rows = np.zeros(len(owners), REFERENCE_ROW)
    rows["owner"], rows["vector"] = owners, vector_rows
    rows["sha256"] = [s.encode("ascii") for s in sha256s]
    rows["path"] = [p.encode() if len(p.encode()) <= PATH_BYTES else b"" for p in paths]
    return rows


def write_snapshot(root: Path, content: dict, references: np.ndarray, vectors: np.ndarray) -> str:
    """Write a snapshot under `root`/<version> (once: a version's files never change) and return its version."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=root))
    try:
        np.save(staging / REFERENCES, np.asarray(references, REFERENCE_ROW))
        np.save(staging / VECTORS, np.ascontiguousarray(vectors, np.float32))
        digests = {name: file_sha256(staging / name) for name in (REFERENCES, VECTORS)}
        version = version_of(content, digests)
        (staging / MANIFEST).write_text(json.dumps({"version": version, "files": digests, "content": content}))
        target = root / version
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # else another process wrote the same version first: the same files
                raise
        return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class Snapshot:
    version: str
    embedder: str
    characters: list[dict]  # id, name, policy
    references: np.ndarray  # REFERENCE_ROW, memory-mapped
    vectors: np.ndarray  # (rows, d) float32, memory-mapped

    def files_of(self, owner: int) -> list[tuple[str, str]]:
        """A character's references as (path on the gate's disk, sha256), in registration order."""
        rows = self.references[np.flatnonzero(self.references["owner"] == owner)]
        return [(row["path"].decode(), row["sha256"].decode("ascii")) for row in rows]

    def nearest(self, lora: np.ndarray, base: np.ndarray, count: int) -> list[int]:
        """The `count` characters the LoRA's renders move towards, beyond what the base model's renders of the
        same probes already show (so a character every render resembles a little is not preferred): per
        reference, the mean cosine over the LoRA's renders less the mean over the base's; per character, its
        best reference. The mean, not the best render: a LoRA shifts most of its renders, while one render can
        come near any of thousands of characters by chance (an exploratory run on the fixture world,
        2026-12-06: at 10,011 characters the true one ranked at worst 219th by the mean, 5,419th by the best
        render). Characters with a reference not embedded yet come first (unknown is not far)."""
        owners = self.references["owner"]
        best = np.full(len(self.characters), -np.inf, np.float32)
        embedded = np.flatnonzero(self.references["vector"] >= 0)
        rows = self.references["vector"][embedded]
        for start in range(0, len(embedded), BLOCK):
            block = np.asarray(self.vectors[rows[start:start + BLOCK]], np.float32)
            lift = block @ (lora.mean(axis=0) - base.mean(axis=0))
            np.maximum.at(best, owners[embedded[start:start + BLOCK]], lift)
        unembedded = np.unique(owners[self.references["vector"] < 0])
        best[unembedded] = np.inf
        order = np.argsort(-best, kind="stable")
        return [int(i) for i in order[:count] if best[i] > -np.inf]


def read_snapshot(directory: Path, version: str) -> Snapshot:
    """The snapshot in `directory`, checked to be `version` (its manifest and both arrays); SnapshotError if not."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        digests, content = manifest["files"], manifest["content"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"registry snapshot {version} cannot be read at {directory}: {exc}") from None
    if manifest.get("version") != version or version_of(content, digests) != version:
        raise SnapshotError(f"the registry snapshot at {directory} is not version {version}")
    for name, digest in digests.items():
        if not (directory / name).is_file() or file_sha256(directory / name) != digest:
            raise SnapshotError(f"registry snapshot {version}: {name} does not have the sha256 its manifest names")
    try:
        references = np.load(directory / REFERENCES, mmap_mode="r", allow_pickle=False)
        vectors = np.load(directory / VECTORS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"registry snapshot {version}: {exc}") from None
    if references.dtype != REFERENCE_ROW or vectors.ndim != 2:
        raise SnapshotError(f"registry snapshot {version}: arrays of an unknown layout")
    return Snapshot(version, str(content["embedder"]), list(content["characters"]), references, vectors)


@functools.lru_cache(maxsize=4)
def cached_snapshot(directory: str, version: str) -> Snapshot:
    """read_snapshot, once per process for each version (a version's files never change)."""
    return read_snapshot(Path(directory), version)
