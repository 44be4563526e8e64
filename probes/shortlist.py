"""Which registered characters the likelihood probe measures for one LoRA, when the registry is a snapshot.

The likelihood probe's cost grows with every character it measures, so a large registry is cut down first by
what the probe has already paid for: the renders. The snapshot's index (`Snapshot.nearest`) ranks characters by
how much closer the LoRA's renders come to their references than the base model's renders of the same probes;
the first `index_shortlist` of them, with every character the LoRA names and every one not embedded yet, go on
to the likelihood screen (probes/likelihood.py), which keeps the strongest for the full measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from probes.likelihood import LikelihoodSpec, ReferenceSet
from probes.snapshot import Snapshot

Materialize = Callable[[str, str], str]  # (path on the gate's disk, sha256) -> a path on this worker


def candidates(snapshot: Snapshot, named: Collection[str], count: int, materialize: Materialize,
               per_character: int):
    """The engine's `candidates` for a registry snapshot: up to `count` characters from the index, plus the
    named, each with its first `per_character` references on this worker; `count` 0 or at least the
    registry's size measures every character."""
    named = set(named)

    def pick(lora_vectors: np.ndarray, base_vectors: np.ndarray) -> tuple[list[ReferenceSet], dict]:
        total = len(snapshot.characters)
        if not count or count >= total:
            chosen = list(range(total))
        else:
            chosen = snapshot.nearest(_unit(lora_vectors), _unit(base_vectors), count)
        indices = set(chosen) | {i for i, c in enumerate(snapshot.characters) if c["id"] in named}
        sets = []
        for i in sorted(indices):
            character = snapshot.characters[i]
            files = snapshot.files_of(i)[:per_character]
            sets.append(ReferenceSet(character["id"], character["name"],
                                     tuple(materialize(path, digest) for path, digest in files),
                                     named=character["id"] in named))
        scope = {"registry": snapshot.version, "characters": total, "shortlisted": len(sets),
                 "index_shortlist": count}
        return sets, scope

    return pick


def candidates_for(snapshot: Snapshot, named: Collection[str], spec: LikelihoodSpec | None,
                   materialize: Materialize):
    """`candidates` with a probe set's [likelihood] numbers (none: no likelihood table, nothing measured)."""
    return candidates(snapshot, named, spec.index_shortlist if spec else 0, materialize,
                      spec.references if spec else 0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
