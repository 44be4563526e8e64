"""Calibrate matching thresholds from data: negatives are base renders and clean LoRAs' renders.

Nothing here is a magic number: the per-render threshold is a high quantile of what negatives score; the
quarantine count is one more than any negative subject reached, and more where a LoRA has renders enough
that chance alone (the negatives' per-render match rate) would reach it for more than the target share of
clean LoRAs; an automatic block needs a render more similar than any negative ever was. The likelihood
probe's thresholds sit above the largest gain any clean LoRA gave any character's references, by a stated
margin; its residual threshold above the largest residual any clean LoRA left, read in proportion beyond the
largest effect on the whole registry any clean LoRA had (gate.detection.sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gate.detection.matching import Scores, Thresholds, render_matches
from gate.detection.sensitivity import effect_reach, residual_floor, sensitivities

DEFAULT_QUANTILE = 0.99
# Issue 5's target: at most 1% of clean LoRAs flagged. The matching-render counts are held to it.
DEFAULT_FALSE_POSITIVE_TARGET = 0.01
# How far above the largest clean-LoRA gain a character's gain must be: quarantine, then the character's policy.
# The margins are policy (a gain is a relative error cut: 0.05 is 5 points), the base of it is measured.
LIKELIHOOD_MARGINS = (0.05, 0.10)


@dataclass(frozen=True)
class Subject:
    """One negative: a clean LoRA's scores with the base scores for the same probes (or the base itself)."""

    name: str
    lora: Scores
    base: Scores
    gains: dict[str, float] | None = None  # likelihood gain per character, the whole LoRA's; None: not measured
    # Every character's gain the probe measured, screened on fewer references too: what the LoRA does to the
    # whole registry, which the sensitivities are fitted from (gate.detection.sensitivity).
    profile: dict[str, float] | None = None
    # The gains a variant of the LoRA showed (a part alone, the whole at another strength), where larger than the
    # whole's as published.
    variant_gains: dict[str, float] | None = None


def _nearest_scores(scores: Scores) -> np.ndarray:
    return scores.similarity.max(axis=1) if scores.similarity.size else np.zeros(0)


def calibrate(subjects: list[Subject], quantile: float = DEFAULT_QUANTILE, min_quarantine: int = 2,
              likelihood_margins: tuple[float, float] = LIKELIHOOD_MARGINS,
              false_positive_target: float = DEFAULT_FALSE_POSITIVE_TARGET) -> Thresholds:
    """Fit thresholds so that negatives stay below them; record the evidence they rest on."""
    if not subjects:
        raise ValueError("calibration needs at least one negative (the base renders)")
    render_scores = np.concatenate([_nearest_scores(s.lora) for s in subjects])
    lifts = []
    for subject in subjects:
        if subject.lora is subject.base:
            continue
        nearest = subject.lora.similarity.argmax(axis=1)
        rows = np.arange(len(nearest))
        lifts.append(subject.lora.similarity[rows, nearest] - subject.base.similarity[rows, nearest])
    lift_values = np.concatenate(lifts) if lifts else np.zeros(1)
    render_score = float(np.quantile(render_scores, quantile))
    # The lift is a rule, not a fitted margin: the LoRA render must be more like the character than the base
    # render of the same probe. A high quantile of clean LoRAs' lifts was tried and rejected: a style LoRA
    # can recolour a render toward some character by a wide margin, and that margin then hid every real
    # match. The score threshold and the counts below carry the false-positive control.
    lift = 0.0
    provisional = Thresholds(render_score, lift, 0, 0, 0.0)
    assigned = {s.name: render_matches(s.lora, s.base, provisional) for s in subjects}
    negative_matches = {name: int(np.bincount(a + 1, minlength=1)[1:].max(initial=0)) for name, a in assigned.items()}
    matched_renders = sum(int((a >= 0).sum()) for a in assigned.values())
    quarantine = max(min_quarantine, max(negative_matches.values()) + 1)
    # A LoRA that cuts no character's error (gain <= 0) is the floor: the base model itself gains nothing.
    measured = {s.name: max(s.gains.values(), default=0.0) for s in subjects if s.gains is not None}
    top_gain = max([0.0, *measured.values()])
    likelihood = {}
    if measured:
        likelihood = {"likelihood_quarantine": round(top_gain + likelihood_margins[0], 6),
                      "likelihood_block": round(top_gain + likelihood_margins[1], 6)}
    # A variant's gain shows only where it beat the whole's (the record keeps one gain per character, the
    # strongest, with the whole's beside it); the wholes bound the rest, so both count. One pair for every kind of
    # variant, so that no variant's gain is hidden from the fit behind another kind's.
    variants = {s.name: max(s.variant_gains.values()) for s in subjects if s.variant_gains}
    if measured and any(s.variant_gains is not None for s in subjects):
        top_variant = max([top_gain, *variants.values()])
        likelihood.update(likelihood_variant_quarantine=round(top_variant + likelihood_margins[0], 6),
                          likelihood_variant_block=round(top_variant + likelihood_margins[1], 6))
    negative_gains = [s.profile for s in subjects if s.profile]
    floor = residual_floor(negative_gains)
    if floor is not None:  # the residual rule sits above every clean LoRA's largest residual, by the same margin
        likelihood.update(likelihood_residual=round(floor + likelihood_margins[0], 6),
                          likelihood_sensitivity=sensitivities(negative_gains),
                          likelihood_effect_reach=round(effect_reach(negative_gains), 6))
    return Thresholds(
        render_score=round(render_score, 6),
        lift=round(lift, 6),
        quarantine_matches=quarantine,
        block_matches=quarantine + 1,
        block_score=round(float(render_scores.max()) + 1e-6, 6),
        **likelihood,
        render_false_rate=round(matched_renders / render_scores.size, 6) if render_scores.size else None,
        false_positive_target=false_positive_target,
        provenance={
            "quantile": quantile,
            "negative_subjects": len(subjects),
            "negative_renders": int(render_scores.size),
            "max_negative_score": round(float(render_scores.max()), 6),
            "negative_matches": negative_matches,
            "negative_matched_renders": matched_renders,
            "negative_lift_quantile": round(float(np.quantile(lift_values, quantile)), 6),
            "negative_likelihood_gains": {name: round(gain, 6) for name, gain in measured.items()},
            "negative_likelihood_variant_gains": {name: round(gain, 6) for name, gain in variants.items()},
            "negative_likelihood_residual": round(floor, 6) if floor is not None else None,
            "likelihood_margins": list(likelihood_margins) if measured else None,
        },
    )


def base_subject(scanner, references) -> Subject:
    """The base model alone as a negative: its renders of the generic and registry-name probes."""
    from gate.detection.matching import score

    names = [c.name for c in scanner.characters.values()]
    _, base_vectors = scanner.engine.base(scanner.engine.probe_set.probes({"registry": names}))
    base_scores = score(base_vectors, references)
    return Subject("base model", base_scores, base_scores)


def outcome_subject(name: str, outcome, references) -> Subject:
    """A probed clean LoRA as a negative, with the base renders of the same probes."""
    from gate.detection.matching import score

    # An engine without the likelihood probe measures nothing: None, not "gained nowhere".
    registered = [g for g in outcome.likelihood if g.character_id in references.character_ids]
    gains = {g.character_id: g.of_whole for g in registered if not g.screened} if outcome.likelihood else None
    profile = {g.character_id: g.of_whole for g in registered} if outcome.likelihood else None
    # None where the probe set measures no variants (no parts, no other strengths); {} where it does and none
    # beat the whole as published.
    scope = getattr(outcome, "scope", None) or {}
    variants = ({g.character_id: g.gain for g in registered if g.variant and not g.screened}
                if outcome.likelihood and (scope.get("blocks") or scope.get("strengths")) else None)
    return Subject(name, score(outcome.lora_embeddings, references), score(outcome.base_embeddings, references), gains,
                   profile, variants)


def negative_subjects(scanner, paths: list[Path], references, progress=None) -> list[Subject]:
    """Probe each known-clean LoRA, plus the base model alone, and score them against `references`."""
    from gate.intake import inspect_file

    progress = progress or (lambda stage: None)
    subjects = [base_subject(scanner, references)]
    for path in paths:
        progress(f"probing negative {Path(path).name}")
        inspection = inspect_file(path, scanner.settings.intake)
        if not inspection.ok:
            raise ValueError(f"negative {path} was refused by intake: {inspection.error.code}")
        subjects.append(outcome_subject(Path(path).stem, scanner.probe(path, inspection), references))
    return subjects


def write_calibration(path: Path, thresholds: Thresholds, *, probe_set_id: str, embedder_id: str,
                      negatives: list[str], characters: list[str]) -> None:
    """The calibration file `gate scan` reads: thresholds, what they were fitted for, and on what."""
    import json
    from datetime import UTC, datetime

    path.parent.mkdir(parents=True, exist_ok=True)
    kept = {}
    if path.exists():  # the image thresholds (gate.images) are fitted apart: they stay
        try:
            kept = {k: v for k, v in json.loads(path.read_text()).items() if k == "images"}
        except ValueError:
            kept = {}
    path.write_text(json.dumps({
        "thresholds": thresholds.to_dict(), "probe_set": probe_set_id, "embedder": embedder_id,
        "negatives": negatives, "characters": characters,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **kept,
    }, indent=2, ensure_ascii=False))
