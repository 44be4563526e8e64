"""An image's score for a character: the mean of its `k` most similar reference views of that character (each
taken at the image's own most similar view), not its single most similar pair.

One (image view, reference view) pair can come close by chance: a crop of a generic scene that shares a
character's colours with one crop of one sheet. A drawing of the character comes close to several of its
references' views at once. Averaging the few best lets that agreement count; on the fixture world it raised
per-image recall from 0.93 to 0.96 at the same 1% false rate, on a selection split drawn for the choice
(docs/performance.md, "Screening images": how k was chosen, and what it does with one sheet or eight).

`k` grows with the references a character has: one more than its sheets, up to CONSENSUS. With one sheet an
image is asked to resemble two of its views; with eight, six of its eighty. References held whole (one row a
sheet, an older embedding) keep the best pair: k = 1.
"""

from __future__ import annotations

import numpy as np

CONSENSUS = 6  # the most reference views an image's score for one character averages


def consensus_counts(owners: np.ndarray, characters: int, views: int, consensus: int = CONSENSUS) -> np.ndarray:
    """(characters,) how many reference views each character's score averages: min(consensus, 1 + its
    references), or 1 where references are whole (`views` 1) or `consensus` is 1 (the best pair)."""
    if views <= 1 or consensus <= 1:
        return np.ones(characters, int)
    sheets = np.bincount(owners, minlength=characters) // views
    return np.minimum(consensus, 1 + sheets)


def _segments(owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each run of equal owners."""
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    return starts, np.diff(np.r_[starts, len(owners)])


def top_per_owner(similarity: np.ndarray, owners: np.ndarray,
                  limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's `limit` largest similarities per owner. `similarity` is (n, m) with the column owners
    `owners` (m,). Returns (values (n, q), columns (n, q) into `similarity`, owners of those q positions): the
    positions are grouped by owner, the same for every image, each owner's largest first."""
    order = np.argsort(owners, kind="stable")
    grouped_owners = owners[order]
    starts, lengths = _segments(grouped_owners)
    # A broken vector's NaN is no resemblance, not a sort key that would shift every later owner's columns.
    grouped = np.nan_to_num(similarity[:, order].astype(np.float64), nan=-1.0, posinf=1.0, neginf=-1.0)
    segment = np.broadcast_to(np.repeat(np.arange(len(starts)), lengths), grouped.shape)
    within = np.lexsort((-grouped, segment), axis=-1)  # by owner, then each owner's largest first
    keep = np.flatnonzero(np.arange(len(order)) - np.repeat(starts, lengths) < limit)
    picked = within[:, keep]
    return np.take_along_axis(grouped, picked, axis=1), order[picked], grouped_owners[keep]


def owner_means(values: np.ndarray, owners: np.ndarray,
                counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From top_per_owner's values and owners: (each owner present, (n, owners) the mean of its first
    counts[owner] values, the position of its largest)."""
    starts, lengths = _segments(owners)
    present = owners[starts]
    take = np.minimum(counts[present], lengths)
    rank = np.arange(len(owners)) - np.repeat(starts, lengths)  # each position's place in its owner's values
    counted = np.where(rank < np.repeat(take, lengths), values, 0.0)  # summed exactly: k = 1 is the pair itself
    return present, np.add.reduceat(counted, starts, axis=1) / take, starts
