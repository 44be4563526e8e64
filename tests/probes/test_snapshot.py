"""The registry snapshot a probe worker reads: content-addressed, checked before use, memory-mapped; and the
index over it that cuts a large registry down to the characters nearest the renders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.shortlist import candidates
from probes.snapshot import (
    MANIFEST,
    REFERENCES,
    VECTORS,
    SnapshotError,
    read_snapshot,
    reference_rows,
    write_snapshot,
)


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def registry(tmp_path, vectors, owners, vector_rows=None, names=None):
    count = max(owners) + 1
    characters = [{"id": f"c{i}", "name": (names or {}).get(i, f"character {i}"), "policy": "block"}
                  for i in range(count)]
    vector_rows = list(range(len(owners))) if vector_rows is None else vector_rows
    rows = reference_rows(owners, vector_rows, [f"{i:064x}" for i in range(len(owners))],
                          [f"/gate/references/{i}.png" for i in range(len(owners))])
    version = write_snapshot(tmp_path / "registry", {"embedder": "emb@1", "characters": characters}, rows,
                             unit(vectors))
    return version, read_snapshot(tmp_path / "registry" / version, version)


def test_a_snapshot_is_named_by_its_content_and_read_back_memory_mapped(tmp_path):
    vectors = np.eye(4)[[0, 1, 2, 3]]
    version, snapshot = registry(tmp_path, vectors, [0, 0, 1, 1])
    again, _ = registry(tmp_path, vectors, [0, 0, 1, 1])
    other, _ = registry(tmp_path, np.eye(4)[[0, 1, 2, 2]], [0, 0, 1, 1])
    assert version == again != other and version.startswith("reg-")
    assert isinstance(snapshot.vectors, np.memmap) and isinstance(snapshot.references, np.memmap)
    assert snapshot.embedder == "emb@1" and [c["id"] for c in snapshot.characters] == ["c0", "c1"]
    assert snapshot.files_of(1) == [("/gate/references/2.png", f"{2:064x}"), ("/gate/references/3.png", f"{3:064x}")]


@pytest.mark.parametrize("damage", ["vectors", "references", "manifest", "renamed"])
def test_a_damaged_or_misnamed_snapshot_is_refused(tmp_path, damage):
    version, _ = registry(tmp_path, np.eye(3), [0, 1, 2])
    directory = tmp_path / "registry" / version
    if damage == "vectors":
        data = bytearray((directory / VECTORS).read_bytes())
        data[-1] ^= 1
        (directory / VECTORS).write_bytes(bytes(data))
    elif damage == "references":
        (directory / REFERENCES).write_bytes(b"\x93NUMPY not really")
    elif damage == "manifest":
        manifest = json.loads((directory / MANIFEST).read_text())
        manifest["content"]["characters"][0]["policy"] = "allow"  # a policy changed, the version kept
        (directory / MANIFEST).write_text(json.dumps(manifest))
    else:
        version = "reg-" + "0" * 24
    with pytest.raises(SnapshotError):
        read_snapshot(directory, version)


def test_the_index_ranks_characters_by_how_far_the_lora_moves_renders_towards_them(tmp_path):
    # Character 0 is what every base render already resembles; character 2 is what the LoRA's renders become.
    vectors = np.eye(4)[[0, 0, 1, 2, 3]]
    _, snapshot = registry(tmp_path, vectors, [0, 0, 1, 2, 3])
    base = unit([[1, 0.1, 0, 0], [1, 0, 0.1, 0]])
    lora = unit([[0.8, 0, 0.6, 0], [0.9, 0, 0.4, 0.1]])
    assert snapshot.nearest(lora, base, 1) == [2]
    assert snapshot.nearest(lora, base, 4)[0] == 2 and len(snapshot.nearest(lora, base, 4)) == 4


def test_characters_not_embedded_yet_are_always_kept(tmp_path):
    vectors = np.eye(3)[[0, 1]]
    _, snapshot = registry(tmp_path, vectors, [0, 1, 2], vector_rows=[0, 1, -1])
    lora = base = unit([[1, 0, 0]])
    assert snapshot.nearest(lora, base, 1) == [2]


def test_the_shortlist_keeps_the_nearest_and_the_named_and_says_what_it_covered(tmp_path):
    vectors = np.eye(6)
    version, snapshot = registry(tmp_path, vectors, [0, 1, 2, 3, 4, 5], names={4: "Named One"})
    fetched = []
    pick = candidates(snapshot, {"c4"}, 2, lambda path, digest: fetched.append(digest) or f"/cache/{digest}", 8)
    lora, base = unit([[0, 0, 1, 0.5, 0, 0]]), unit([[1, 0, 0, 0, 0, 0]])
    sets, scope = pick(lora, base)
    assert [s.character_id for s in sets] == ["c2", "c3", "c4"]
    assert [s.named for s in sets] == [False, False, True] and sets[2].name == "Named One"
    assert sets[0].paths == (f"/cache/{2:064x}",) and len(fetched) == 3  # only the shortlisted are fetched
    assert scope == {"registry": version, "characters": 6, "shortlisted": 3, "index_shortlist": 2}
    every, scope = candidates(snapshot, (), 0, lambda path, digest: path, 8)(lora, base)
    assert len(every) == 6 and scope["shortlisted"] == 6


def test_writing_a_version_that_is_already_there_keeps_it(tmp_path):
    first, _ = registry(tmp_path, np.eye(3), [0, 1, 2])
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "registry" / first).iterdir()}
    again, snapshot = registry(tmp_path, np.eye(3), [0, 1, 2])
    assert again == first and snapshot.version == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "registry" / first).iterdir()} == before
    assert [p.name for p in (tmp_path / "registry").iterdir()] == [first]  # no staging left behind
