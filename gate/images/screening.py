"""Matching images against the registry and judging a set of them (torch-free: vectors in, verdict out).

Each image matches its nearest character when its score for it reaches the calibrated `score`: the mean of its
few most similar reference views of that character (gate.images.consensus), or one pair above every negative's
best pair (`pair_block_score`). At `block_score`, above every negative image calibration saw, the match is
strong. A set
is judged per character:
- quarantine when the distinct images matching it are more than a clean set of this size reaches by chance (at
  most `false_positive_target` over all characters), or when one match is strong. A negative image matches
  some character with the calibrated `false_rate`; which one follows the calibration's near misses (the quarter
  of negatives most like some character): a character they came near often gets a larger share of the rate and
  of the target, one they never came near a small one. Chance spreads a clean set's matches over the
  characters, and a set that shows one character piles them on it: counting one character's matches against
  its own share is what lets a few drawings in a large set stand out (benchmarks.image_screening). Without
  near misses (a calibration from before 2026-12-07) every character is held to the whole rate and target.
- the character's policy (block or quarantine) when both hold: a strong match, and more than chance.
One image alone is therefore at most quarantined: a person decides on one picture. The captions' words are
screened for registered names too, which quarantines a set (a name is a hint, not a likeness).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from gate.detection.matching import References, chance_count
from gate.detection.screening import NameHit
from gate.images.consensus import consensus_counts, owner_means, top_per_owner

VERDICT_ORDER = {"allow": 0, "quarantine": 1, "block": 2}


@dataclass(frozen=True)
class ImageThresholds:
    """Calibrated on negative images (gate.images.calibration); kept with what they were fitted on."""

    score: float  # an image matches its nearest character at this similarity
    block_score: float  # ... strongly, at this one (above the negatives calibration saw)
    false_rate: float  # how often a negative image matched some character at `score`
    false_positive_target: float = 1e-3  # chance a clean set may be quarantined by its count
    provenance: dict | None = None
    # Per character id, how many of the calibration's near misses (the negatives most like some character) came
    # nearest it; None: every character is held to the whole rate.
    near_misses: dict[str, int] | None = None
    # The reference views an image's score for a character averaged when these were fitted (gate.images.
    # consensus); 1, the single most similar, for thresholds fitted before the consensus (2026-12-07).
    consensus: int = 1
    # With a consensus, one (view, reference view) pair at this similarity, above every negative's best pair,
    # scores the image on its own: a copy of a reference is the strongest evidence there is.
    pair_block_score: float | None = None

    def shares(self, character_ids) -> dict[str, float] | None:
        """Each registered character's share of the false rate and of the target (summing to 1 over the
        registry), from its near misses plus one; a character registered since calibration counts as the most
        missed one did (a new design may look generic). None without near misses."""
        if self.near_misses is None or not character_ids:
            return None
        unseen = max(self.near_misses.values(), default=0)
        weights = {cid: self.near_misses.get(cid, unseen) + 1 for cid in character_ids}
        total = sum(weights.values())
        return {cid: weight / total for cid, weight in weights.items()}

    def needed(self, images: int, share: float = 1.0) -> int:
        """Distinct images matching one character that a clean set of `images` reaches by chance at most rarely,
        for a character with `share` of the false rate and of the target (1: any character's)."""
        return max(1, chance_count(images, self.false_rate * share, self.false_positive_target * share))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageThresholds:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ImageMatch:
    """One image's nearest character, and how similar."""

    index: int  # into the set's images
    character_id: str
    score: float
    reference: int  # row into References.vectors: the most similar reference
    strong: bool
    view: int = 0  # which of the image's views (probes/views.py view_boxes) came closest: 0 is the whole image


@dataclass
class SetVerdict:
    verdict: str
    reasons: list[dict] = field(default_factory=list)
    matches: list[ImageMatch] = field(default_factory=list)  # every image that matched, strongest first


SIMILARITY_BYTES = 32 << 20  # the (views x references) similarities held at once: a registry of thousands of
#                              characters has hundreds of thousands of reference views
# Characters an image is compared with view by view: those nearest by their sheets whole. Every view of every
# sheet of a registry of 10,000 characters is 400,000 rows, ten times the sheets alone (benchmarks.
# image_registry_scaling measures what the shortlist changes).
SHORTLIST = 64


def nearest(vectors: np.ndarray, references: References, shortlist: int = SHORTLIST,
            consensus: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the nearest character (index into references.character_ids), its score, and the reference
    row most similar to it. An image's row may hold several views' vectors (probes/views.py): it is as similar to
    a reference view as its most similar view; its score for a character averages its `consensus` most similar
    reference views of that character (gate.images.consensus; 1: the single most similar). With more than 4 x
    `shortlist` characters (fewer cost more to shortlist than to compare) and references held as views, each
    image is compared view by view with the `shortlist` characters nearest by their sheets whole alone (0: with
    all). Memory is bounded by a few times SIMILARITY_BYTES, not by the registry's size times the set's: a set
    is matched as many images at a time as that allows."""
    return nearest_with_pair(vectors, references, shortlist, consensus)[:3]


def nearest_with_pair(vectors: np.ndarray, references: References, shortlist: int = SHORTLIST,
                      consensus: int = 1) -> tuple[np.ndarray, ...]:
    """nearest()'s three answers, then the same three for the single most similar pair, from one pass."""
    if not len(vectors) or not len(references.vectors):
        empty = np.zeros(len(vectors))
        return (empty.astype(int) - 1, empty, empty.astype(int)) * 2
    views = np.asarray(vectors, np.float32).reshape(len(vectors), -1, references.vectors.shape[1])
    characters = len(references.character_ids)
    counts = consensus_counts(references.owners, characters, references.views, consensus)
    if (references.views > 1 and 0 < 4 * shortlist < characters
            and bool(np.all(np.diff(references.owners) >= 0))):
        step = max(1, SIMILARITY_BYTES // (4 * characters))  # each image's best sheet per character
        match = partial(_nearest_shortlisted, references=references, shortlist=shortlist, counts=counts)
    else:  # each image's largest few similarities per character, the blocks' and their merge's copies
        step = max(1, SIMILARITY_BYTES // (48 * int(counts.max()) * characters))
        match = partial(_nearest_all, rows=references.vectors, owners=references.owners, counts=counts)
    parts = [match(views[start:start + step]) for start in range(0, len(views), step)]
    return tuple(np.concatenate(answers) for answers in zip(*parts, strict=True))


def _blocks(views: np.ndarray, rows: np.ndarray):
    """(start, each image's similarity to rows[start:start + block] by its most similar view), a block of rows
    at a time."""
    flat = views.reshape(-1, views.shape[2])
    block = max(1, SIMILARITY_BYTES // (4 * len(flat)))
    for start in range(0, len(rows), block):
        yield start, (flat @ rows[start:start + block].T).reshape(len(views), views.shape[1], -1).max(axis=1)


def _scored(values: np.ndarray, rows: np.ndarray, owners: np.ndarray, counts: np.ndarray):
    """From each image's largest similarities per owner (top_per_owner's values, with the reference rows they
    are of): the owner with the highest score, the score, and that owner's most similar row; then the owner of
    the most similar single row, its similarity, and the row."""
    present, means, starts = owner_means(values, owners, counts)
    best, single = means.argmax(axis=1), values[:, starts].argmax(axis=1)
    every = np.arange(len(values))
    return (present[best], means[every, best], rows[every, starts[best]],
            present[single], values[every, starts[single]], rows[every, starts[single]])


def _nearest_all(views: np.ndarray, rows: np.ndarray, owners: np.ndarray, counts: np.ndarray):
    limit = int(counts.max())
    values, found, kept = [], [], []  # each block's largest similarities per owner (a character may span two)
    for start, similarity in _blocks(views, rows):
        top, columns, block_owners = top_per_owner(similarity, owners[start:start + similarity.shape[1]], limit)
        values.append(top), found.append(start + columns), kept.append(block_owners)
    if len(values) > 1:  # merged, each owner's largest first again
        values, picked, kept = top_per_owner(np.concatenate(values, axis=1), np.concatenate(kept), limit)
        return _scored(values, np.take_along_axis(np.concatenate(found, axis=1), picked, axis=1), kept, counts)
    return _scored(values[0], found[0], kept[0], counts)


def _nearest_shortlisted(views: np.ndarray, references: References, shortlist: int, counts: np.ndarray):
    count, per = len(references.character_ids), references.views
    sheets, sheet_owners = references.sheets, references.owners[::per]
    by_character = np.full((len(views), count), -np.inf, np.float32)  # each character's best sheet, whole
    for start, similarity in _blocks(views, sheets):
        owners = sheet_owners[start:start + similarity.shape[1]]
        bounds = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])  # a character's sheets are together
        characters = owners[bounds]
        by_character[:, characters] = np.maximum(by_character[:, characters],
                                                 np.maximum.reduceat(similarity, bounds, axis=1))
    chosen = np.sort(np.argpartition(-by_character, shortlist - 1, axis=1)[:, :shortlist], axis=1)
    first = np.searchsorted(references.owners, np.arange(count))
    last = np.searchsorted(references.owners, np.arange(count), side="right")
    limit = int(counts.max())
    answers = [np.zeros(len(views), kind) for kind in (int, float, int) * 2]
    for image, characters in enumerate(chosen):
        rows = np.concatenate([np.arange(first[c], last[c]) for c in characters])
        similarity = (views[image] @ references.vectors[rows].T).max(axis=0)
        values, columns, owners = top_per_owner(similarity[None, :], references.owners[rows], limit)
        for answer, value in zip(answers, _scored(values, rows[columns], owners, counts), strict=True):
            answer[image] = value[0]
    return tuple(answers)


def closest_view(vector: np.ndarray, reference: np.ndarray) -> int:
    """Which of an image's views (its row of stacked view vectors) is most similar to one reference."""
    return int((np.asarray(vector, np.float32).reshape(-1, len(reference)) @ reference).argmax())


def scores(vectors: np.ndarray, references: References, thresholds: ImageThresholds,
           shortlist: int = SHORTLIST) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nearest() under the thresholds' rule: the consensus they were fitted on, and where one pair reaches
    `pair_block_score`, that pair's character, reference and similarity instead."""
    owner, score, row, pair_owner, pair, pair_row = nearest_with_pair(vectors, references, shortlist,
                                                                      thresholds.consensus)
    if thresholds.consensus > 1 and thresholds.pair_block_score is not None:
        copied = pair >= thresholds.pair_block_score
        owner, score, row = (np.where(copied, pair_owner, owner), np.where(copied, pair, score),
                             np.where(copied, pair_row, row))
    return owner, score, row


def match_images(vectors: np.ndarray, references: References, thresholds: ImageThresholds) -> list[ImageMatch]:
    owner, score, row = scores(vectors, references, thresholds)
    matched = [ImageMatch(i, references.character_ids[owner[i]], float(score[i]), int(row[i]),
                          bool(score[i] >= thresholds.block_score),
                          closest_view(vectors[i], references.vectors[row[i]]))
               for i in np.flatnonzero(score >= thresholds.score)]
    return sorted(matched, key=lambda m: -m.score)


def judge_set(vectors: np.ndarray, references: References, thresholds: ImageThresholds, policies: dict[str, str],
              names: dict[str, str], name_hits: list[NameHit] = (), keys: Sequence[str] | None = None) -> SetVerdict:
    """The set's verdict under each character's policy (`policies`: id -> block / quarantine), with reasons.
    `keys` (an image's sha256, per row) name the same image sent twice: a count is of distinct images, since
    chance's bound takes them as independent (a clean set that repeats one near miss is not two of them)."""
    keys = list(range(len(vectors))) if keys is None else list(keys)
    total = len(set(keys))
    matches = match_images(vectors, references, thresholds)
    shares = thresholds.shares(references.character_ids) or {}
    needed_at: dict[float, int] = {}  # a binomial tail over up to `total` counts: once a share, not a character
    result = SetVerdict("allow", matches=matches)
    for character_id in dict.fromkeys(m.character_id for m in matches):
        own = [m for m in matches if m.character_id == character_id]
        distinct = len({keys[m.index] for m in own})
        strong = sum(m.strong for m in own)
        share = shares.get(character_id, 1.0)
        if share not in needed_at:
            needed_at[share] = thresholds.needed(total, share)
        needed = needed_at[share]
        over_chance = distinct >= needed
        if not (over_chance or strong):
            continue
        verdict = policies.get(character_id, "quarantine") if (over_chance and strong) else "quarantine"
        name = names.get(character_id, character_id)
        why = (f"{distinct} of {total} images show {name} (best score {own[0].score:.3f}); a clean set of "
               f"{total} reaches {needed} for {name} by chance at most once in "
               f"{1 / thresholds.false_positive_target:.0f} over all characters; "
               f"{strong} {'is a strong match' if strong == 1 else 'are strong matches'} "
               f"({thresholds.block_score:.3f} or more)")
        result.reasons.append({"kind": "image_match", "verdict": verdict, "character": character_id,
                               "message": why, "images": distinct, "strong": strong, "needed": needed})
    for hit in {h.character_id: h for h in name_hits}.values():
        result.reasons.append({"kind": "caption_name", "verdict": "quarantine", "character": hit.character_id,
                               "message": f"a caption names {names.get(hit.character_id, hit.character_id)}: "
                                          f"{hit.text!r}"})
    if not result.reasons:
        seen = (f"{len(matches)} of {total} images resemble a registered character, fewer for any one than "
                f"chance would not explain, and none reaches a strong match ({thresholds.block_score:.3f})"
                if matches else f"none of {total} images resembles a registered character (score "
                                f"{thresholds.score:.3f} or more)")
        result.reasons.append({"kind": "nothing_shown", "verdict": "allow", "character": None, "message": seen})
    result.verdict = max((r["verdict"] for r in result.reasons), key=VERDICT_ORDER.__getitem__)
    return result
