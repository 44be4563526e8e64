"""What a LoRA does to every character, taken out of its likelihood gains (probes/likelihood.py).

A style merged into a character LoRA cuts the base model's likelihood of every reference drawing, the
character's own too, so the character's gain can fall below the likelihood threshold (benchmarks.merges).
Characters are not moved alike: some characters' references suffer more from any change to the model. A
character's sensitivity is its mean gain under the calibration's clean LoRAs. A LoRA's gains across the
registry are fitted as a + b * sensitivity; what the fit leaves on one character, its residual, is what the LoRA
does for that character alone.

The fit is a line through what clean LoRAs do at the weights they were published at. A LoRA that moves every
character much further (a clean LoRA published at twice or four times its weight: mean gains of -0.6 to -5.0
where the fixture world's clean LoRAs reach -0.58) bends away from that line, and what it leaves grows with how
far it moved them all: at 4x, every one of the world's 9 clean LoRAs left a residual above the threshold. Beyond
the `reach` calibration saw (the largest effect, below, of any clean LoRA), a residual is read in proportion:
scaled by reach / effect. A style strong enough to move the registry that far reads a character merged under it
in proportion too: the parts and the other strengths (probes/blocks.py, the probe set's `strengths`) remain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

MIN_CHARACTERS = 3  # a line through fewer points leaves no residual worth reading
MIN_SENSITIVITY = 1e-3  # a registry clean LoRAs barely move: an effect is measured against at least this


def sensitivities(negatives: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each character's mean gain over the negatives (clean LoRAs) that measured it."""
    measured: dict[str, list[float]] = {}
    for gains in negatives:
        for character, gain in gains.items():
            measured.setdefault(character, []).append(gain)
    return {character: round(float(np.mean(values)), 6) for character, values in sorted(measured.items())}


def residuals(gains: Mapping[str, float], sensitivity: Mapping[str, float],
              reach: float | None = None) -> dict[str, float]:
    """Each character's gain less the fit, for the characters with a sensitivity. One without (registered since
    the calibration, or held back from it) is left out: taken as the mean one, a style that happens to spare it
    made it a false match (benchmarks.merges). Empty where fewer than MIN_CHARACTERS remain. With `reach`, a LoRA
    whose effect (below) exceeds it has its residuals scaled by reach / effect."""
    characters = [character for character in gains if character in sensitivity]
    if len(characters) < MIN_CHARACTERS:
        return {}
    x = np.array([sensitivity[character] for character in characters])
    y = np.array([gains[character] for character in characters])
    design = np.stack([np.ones_like(x), x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    scale = read_at(effect(gains, sensitivity), reach)
    return dict(zip(characters, ((y - design @ coefficients) * scale).tolist(), strict=True))


def effect(gains: Mapping[str, float], sensitivity: Mapping[str, float]) -> float:
    """How far a LoRA moves the registry as a whole, against how far clean LoRAs move the same characters: its
    mean gain over the characters the fit reads (those with a sensitivity) over their mean sensitivity, in size.
    Relative, so that a subset of the registry (a large registry's shortlist, a character retired since) measures
    the same LoRA alike whichever characters are in it. 0 where nothing is known or a gain is not a number."""
    known = [character for character in gains if character in sensitivity]
    if not known:
        return 0.0
    moved = abs(float(np.mean([gains[character] for character in known])))
    usual = abs(float(np.mean([sensitivity[character] for character in known])))
    value = moved / max(usual, MIN_SENSITIVITY)
    return value if np.isfinite(value) else 0.0


def read_at(effect_size: float, reach: float | None) -> float:
    """The share of a residual that is read: 1 within the reach calibration saw (or without one), else
    reach / effect."""
    if reach is None or not np.isfinite(reach) or reach <= 0 or effect_size <= reach:
        return 1.0
    return reach / effect_size


def effect_reach(negatives: Sequence[Mapping[str, float]]) -> float | None:
    """The largest effect any negative (clean LoRA) had, against the sensitivities they give together; None
    without negatives."""
    usual = sensitivities(negatives)
    found = [effect(gains, usual) for gains in negatives if gains]
    return max(found) if found else None


def residual_floor(negatives: Sequence[Mapping[str, float]]) -> float | None:
    """The largest residual any negative leaves on any character, each fitted with the sensitivities of the
    others (its own would flatter it), read whole: each is within the reach the negatives set together. None
    with fewer than two negatives."""
    if len(negatives) < 2:
        return None
    largest = [max(residuals(gains, sensitivities([*negatives[:i], *negatives[i + 1:]])).values(), default=None)
               for i, gains in enumerate(negatives)]
    found = [value for value in largest if value is not None]
    return max(found) if found else None
