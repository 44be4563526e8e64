"""What a LoRA does to every character, taken out of its likelihood gains (probes/likelihood.py).

A style merged into a character LoRA cuts the base model's likelihood of every reference drawing, the
character's own too, so the character's gain can fall below the likelihood threshold (benchmarks.merges).
Characters are not moved alike: some characters' references suffer more from any change to the model. A
character's sensitivity is its mean gain under the calibration's clean LoRAs. A LoRA's gains across the
registry are fitted as a + b * sensitivity; what the fit leaves on one character, its residual, is what the LoRA
does for that character alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

MIN_CHARACTERS = 3  # a line through fewer points leaves no residual worth reading


def sensitivities(negatives: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each character's mean gain over the negatives (clean LoRAs) that measured it."""
    measured: dict[str, list[float]] = {}
    for gains in negatives:
        for character, gain in gains.items():
            measured.setdefault(character, []).append(gain)
    return {character: round(float(np.mean(values)), 6) for character, values in sorted(measured.items())}


def residuals(gains: Mapping[str, float], sensitivity: Mapping[str, float]) -> dict[str, float]:
    """Each character's gain less the fit, for the characters with a sensitivity. One without (registered since
    the calibration, or held back from it) is left out: taken as the mean one, a style that happens to spare it
    made it a false match (benchmarks.merges). Empty where fewer than MIN_CHARACTERS remain."""
    characters = [character for character in gains if character in sensitivity]
    if len(characters) < MIN_CHARACTERS:
        return {}
    x = np.array([sensitivity[character] for character in characters])
    y = np.array([gains[character] for character in characters])
    design = np.stack([np.ones_like(x), x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    return dict(zip(characters, (y - design @ coefficients).tolist(), strict=True))


def residual_floor(negatives: Sequence[Mapping[str, float]]) -> float | None:
    """The largest residual any negative leaves on any character, each fitted with the sensitivities of the
    others (its own would flatter it). None with fewer than two negatives."""
    if len(negatives) < 2:
        return None
    largest = [max(residuals(gains, sensitivities([*negatives[:i], *negatives[i + 1:]])).values(), default=None)
               for i, gains in enumerate(negatives)]
    found = [value for value in largest if value is not None]
    return max(found) if found else None
