"""The registry's versioned snapshot for probe workers (format: probes/snapshot.py): written by the gate under
<data_dir>/registry/<version> when the registry changes, named by version in every probe request, served to
workers on other machines at GET /internal/registry/<version>/<file>.

Writing one costs a read of the registry; `current_version` does it only when a cheap fingerprint of the
registry's tables has changed since the last call in this process.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from gate.registry.characters import registry_fingerprint
from probes.snapshot import reference_rows, write_snapshot

KEEP = 8  # versions kept on the gate's disk: a probe in flight names one of the last few
_known: dict[tuple, str] = {}
_lock = threading.Lock()


def snapshot_root(data_dir: Path) -> Path:
    return data_dir / "registry"


def current_version(db: Database, data_dir: Path, embedder_id: str) -> str:
    """The registry's snapshot version now, written to disk if it is new."""
    key = (str(data_dir), *registry_fingerprint(db, embedder_id))
    with _lock:
        version = _known.get(key)
        if version and (snapshot_root(data_dir) / version).is_dir():
            return version
        version = write_current(db, snapshot_root(data_dir), embedder_id)
        _known[key] = version
        return version


def write_current(db: Database, root: Path, embedder_id: str) -> str:
    """Write the snapshot of the active registry (a version already on disk is kept as it is) and prune old ones."""
    characters = [{"id": row["id"], "name": row["name"], "policy": row["policy"]}
                  for row in db.query("select id, name, policy from characters where status = 'active' order by id")]
    index = {c["id"]: i for i, c in enumerate(characters)}
    owners, vector_rows, sha256s, paths, vectors = [], [], [], [], []
    for row in db.query(
            "select r.character_id, r.sha256, r.path, e.vector from character_references r "
            "join characters c on c.id = r.character_id and c.status = 'active' "
            "left join reference_embeddings e on e.reference_id = r.id and e.embedder = ? "
            "order by r.character_id, r.id", [embedder_id]):
        owners.append(index[row["character_id"]])
        sha256s.append(row["sha256"])
        paths.append(row["path"])
        if row["vector"] is None:
            vector_rows.append(-1)
        else:
            vector_rows.append(len(vectors))
            vectors.append(np.frombuffer(row["vector"], np.float32))
    dimension = len(vectors[0]) if vectors else 1
    matrix = np.stack(vectors) if vectors else np.zeros((0, dimension), np.float32)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    version = write_snapshot(root, {"embedder": embedder_id, "characters": characters},
                             reference_rows(owners, vector_rows, sha256s, paths), matrix)
    _prune(root, keep={version})
    return version


def _prune(root: Path, keep: set[str]) -> None:
    versions = sorted((p for p in root.glob("reg-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for stale in versions[:-KEEP]:
        if stale.name not in keep:
            shutil.rmtree(stale, ignore_errors=True)
