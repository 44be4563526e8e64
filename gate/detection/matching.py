"""Match probe renders against registered characters' references, render by render, then per character.

A render matches a character when that character is its nearest (best reference similarity), the
similarity clears the calibrated threshold, and it exceeds the base render's similarity for the same
prompt and seed by the calibrated lift: what the LoRA added, not what the base model already drew.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np


def chance_count(rendered: int, rate: float, target: float) -> int:
    """The fewest matching renders that a clean LoRA with `rendered` probe renders reaches by chance with
    probability at most `target`, when each render matches some character with probability `rate`
    (binomial tail, summed in log space from the top so that neither many renders nor a tiny target
    underflows; renders taken as independent, which the negatives' own maximum backs up)."""
    if not (0.0 < target < 1.0 and 0.0 <= rate <= 1.0):  # NaN fails too
        raise ValueError(f"chance_count needs 0 < target < 1 and 0 <= rate <= 1, not {target!r} and {rate!r}")
    if rate == 0.0:
        return 1
    if rate == 1.0:
        return rendered + 1
    log_rate, log_miss, log_target = math.log(rate), math.log1p(-rate), math.log(target)
    whole = math.lgamma(rendered + 1)
    tail = -math.inf  # log P(at least `count` matches)
    for count in range(rendered, 0, -1):
        term = (whole - math.lgamma(count + 1) - math.lgamma(rendered - count + 1)
                + count * log_rate + (rendered - count) * log_miss)
        tail = float(np.logaddexp(tail, term))
        if tail > log_target:
            return count + 1
    return 1


@dataclass(frozen=True)
class Thresholds:
    """Calibrated from data (see gate.detection.calibration); stored with the numbers they came from."""

    render_score: float  # a render must be at least this similar to a character's nearest reference
    lift: float  # ... and this much more similar than the base render of the same probe
    quarantine_matches: int  # renders matching one character that send a LoRA to quarantine
    block_matches: int  # renders needed before a character's policy (block) applies automatically
    block_score: float  # ... with at least one render this similar
    # The likelihood probe (probes/likelihood.py): a character's references made this much likelier (relative
    # denoising-error cut) quarantines, the larger figure applies its policy. None: not calibrated, not used.
    likelihood_quarantine: float | None = None
    likelihood_block: float | None = None
    # The same for a gain a variant of the LoRA showed: one part of it alone (a merge's part, probes/blocks.py)
    # or the whole at another strength (the probe set's `strengths`). Fitted apart on the clean LoRAs' variants:
    # a weaker copy of a clean LoRA, half its rank components or half its weight, can gain a little where the
    # LoRA did not. None: variants unjudged (their whole's gain beside them is).
    likelihood_variant_quarantine: float | None = None
    likelihood_variant_block: float | None = None
    # What is left of a character's gain once what the LoRA does to every character is fitted out
    # (gate.detection.sensitivity): this much quarantines, as a merged style can hide the gain itself. With each
    # character's sensitivity, its mean gain under the calibration's clean LoRAs. None: not calibrated, not used.
    likelihood_residual: float | None = None
    likelihood_sensitivity: dict[str, float] | None = None
    # The largest effect any clean LoRA had (its mean gain against the same characters' mean sensitivity, in size):
    # a LoRA that moves the registry further has its residuals read in proportion (gate.detection.sensitivity.
    # effect). None: read whole.
    likelihood_effect_reach: float | None = None
    # How often a clean render matches some character (measured on the negatives), and the false-positive rate
    # the counts must keep to: a LoRA with more renders needs more matches. None: the fixed counts alone.
    render_false_rate: float | None = None
    false_positive_target: float | None = None
    provenance: dict | None = None

    def needed_matches(self, rendered: int) -> tuple[int, int]:
        """Matching renders that quarantine, and that apply a character's policy, for a LoRA with `rendered`."""
        quarantine = self.quarantine_matches
        if self.render_false_rate is not None and self.false_positive_target is not None:
            quarantine = max(quarantine, chance_count(rendered, self.render_false_rate, self.false_positive_target))
        return quarantine, max(self.block_matches, quarantine + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Thresholds:
        # Calibrations from before 2026-12-07 named the variants' thresholds for the parts, their only kind then.
        data = {**{f"likelihood_variant_{k}": data.get(f"likelihood_part_{k}") for k in ("quarantine", "block")
                   if f"likelihood_part_{k}" in data}, **data}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class References:
    """Reference embeddings of the registered characters, stacked: rows of `vectors` belong to `owners`."""

    character_ids: tuple[str, ...]
    vectors: np.ndarray  # (r, d), L2-normalised
    owners: np.ndarray  # (r,) index into character_ids, in order (a character's rows together)
    paths: tuple[str, ...] = ()  # (r,) the reference images, where known
    views: int = 1  # rows a reference: its views, the whole first (probes/views.py)

    @classmethod
    def stack(cls, by_character: dict[str, np.ndarray]) -> References:
        ids = tuple(cid for cid, vectors in by_character.items() if len(vectors))
        if not ids:
            return cls((), np.zeros((0, 1), np.float32), np.zeros(0, int))
        vectors = np.concatenate([by_character[cid] for cid in ids]).astype(np.float32)
        owners = np.concatenate([np.full(len(by_character[cid]), i) for i, cid in enumerate(ids)])
        return cls(ids, vectors, owners)

    @cached_property
    def sheets(self) -> np.ndarray:
        """Each reference's whole sheet (its first view), contiguous, computed once: what a registry of thousands
        is shortlisted by (gate.images.screening.nearest)."""
        return np.ascontiguousarray(self.vectors[:: self.views])

    def without(self, excluded: set[str]) -> References:
        keep = [i for i, cid in enumerate(self.character_ids) if cid not in excluded]
        rows = np.isin(self.owners, keep)
        remap = {old: new for new, old in enumerate(keep)}
        return References(tuple(self.character_ids[i] for i in keep), self.vectors[rows],
                          np.array([remap[o] for o in self.owners[rows]], dtype=int),
                          tuple(p for p, keep_row in zip(self.paths, rows, strict=False) if keep_row), self.views)


@dataclass(frozen=True)
class Scores:
    """Per render and character: the best reference similarity and which reference gave it."""

    similarity: np.ndarray  # (n, C)
    nearest_reference: np.ndarray  # (n, C) row index into References.vectors


def score(embeddings: np.ndarray, references: References) -> Scores:
    n, count = len(embeddings), len(references.character_ids)
    if n == 0 or count == 0:
        return Scores(np.zeros((n, count), np.float32), np.zeros((n, count), int))
    cosine = embeddings.astype(np.float32) @ references.vectors.T  # (n, r)
    similarity = np.full((n, count), -np.inf, np.float32)
    nearest = np.zeros((n, count), int)
    for c in range(count):
        rows = np.flatnonzero(references.owners == c)
        block = cosine[:, rows]
        best = block.argmax(axis=1)
        similarity[:, c] = block[np.arange(n), best]
        nearest[:, c] = rows[best]
    return Scores(similarity, nearest)


def render_matches(lora: Scores, base: Scores, thresholds: Thresholds) -> np.ndarray:
    """(n,) index of the character each render matches, or -1."""
    if lora.similarity.shape[1] == 0:
        return np.full(lora.similarity.shape[0], -1)
    nearest = lora.similarity.argmax(axis=1)
    rows = np.arange(len(nearest))
    own = lora.similarity[rows, nearest]
    lift = own - base.similarity[rows, nearest]
    hit = (own >= thresholds.render_score) & (lift >= thresholds.lift)
    return np.where(hit, nearest, -1)


@dataclass(frozen=True)
class CharacterMatch:
    """How strongly one character shows in a LoRA's renders, with the best evidence kept."""

    character_id: str
    matched: int
    rendered: int
    best_score: float
    best_lift: float
    best_render: int  # index into the probe renders
    best_reference: int  # row index into References.vectors

    @property
    def share(self) -> float:
        return self.matched / self.rendered if self.rendered else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "share": round(self.share, 4)}


def match_characters(lora: Scores, base: Scores, references: References,
                     thresholds: Thresholds) -> list[CharacterMatch]:
    """Characters with at least one matching render, strongest first."""
    assigned = render_matches(lora, base, thresholds)
    matches = []
    for c in sorted(set(assigned.tolist()) - {-1}):
        rows = np.flatnonzero(assigned == c)
        best = rows[lora.similarity[rows, c].argmax()]
        matches.append(CharacterMatch(
            character_id=references.character_ids[c],
            matched=len(rows),
            rendered=len(assigned),
            best_score=float(lora.similarity[best, c]),
            best_lift=float(lora.similarity[best, c] - base.similarity[best, c]),
            best_render=int(best),
            best_reference=int(lora.nearest_reference[best, c]),
        ))
    return sorted(matches, key=lambda m: (-m.matched, -m.best_score))
