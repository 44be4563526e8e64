"""A style merged into a character LoRA moves every character's likelihood gain: what is left once that is fitted
out (gate.detection.sensitivity) quarantines the character it favours, calibrated on clean LoRAs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fixtures.lora_transforms import Lora, merge, read_lora, write_lora
from gate.detection.calibration import LIKELIHOOD_MARGINS, Subject, calibrate
from gate.detection.decisions import CharacterPolicy, Verdict, decide
from gate.detection.matching import Scores, Thresholds
from gate.detection.sensitivity import effect, effect_reach, residual_floor, residuals, sensitivities
from probes.likelihood import CharacterGain
from tests.conftest import world_lora

# Five characters; some suffer more from any change to the model (c, e) than others (a).
SENSITIVITY = {"a": -0.05, "b": -0.10, "c": -0.30, "d": -0.15, "e": -0.40}
POLICIES = {cid: CharacterPolicy(cid, cid.upper() * 3, Verdict.BLOCK) for cid in SENSITIVITY}
THRESHOLDS = Thresholds(render_score=0.8, lift=0.1, quarantine_matches=2, block_matches=3, block_score=0.9,
                        likelihood_quarantine=0.08, likelihood_block=0.13, likelihood_residual=0.2,
                        likelihood_sensitivity=SENSITIVITY)


def _style(strength: float, offset: float = 0.0) -> dict[str, float]:
    """What a style does: every character's gain moved in proportion to its sensitivity."""
    return {cid: offset + strength * s for cid, s in SENSITIVITY.items()}


def _gains(values: dict[str, float]) -> list[CharacterGain]:
    return [CharacterGain(cid, round(gain, 5), "a character", (gain, gain)) for cid, gain in values.items()]


def test_a_style_leaves_no_residual_and_a_character_on_top_of_it_leaves_its_own():
    style = residuals(_style(1.8, -0.1), SENSITIVITY)
    assert max(abs(v) for v in style.values()) < 1e-9
    merged = _style(1.8, -0.1) | {"c": _style(1.8, -0.1)["c"] + 0.4}  # the character's gain, under the style's
    left = residuals(merged, SENSITIVITY)
    assert max(left, key=left.get) == "c" and left["c"] > 0.25


def test_a_character_without_a_sensitivity_is_left_out_of_the_fit():
    gains = _style(1.0) | {"new": 0.3}  # registered since the calibration: nothing says how a style moves it
    left = residuals(gains, SENSITIVITY)
    assert set(left) == set(SENSITIVITY) and max(abs(v) for v in left.values()) < 1e-9
    assert residuals({"a": 0.1, "b": 0.2}, SENSITIVITY) == {}  # too few to fit a line through
    assert residuals({"x": 0.1, "y": 0.2, "z": 0.0, "a": 0.1}, SENSITIVITY) == {}  # too few known


def test_the_floor_is_each_negatives_largest_residual_fitted_without_it():
    negatives = [_style(1.0), _style(2.0, 0.05), _style(0.5) | {"a": 0.1}]
    assert sensitivities(negatives)["a"] == pytest.approx((-0.05 - 0.05 + 0.1) / 3, abs=1e-6)
    floor = residual_floor(negatives)
    assert floor == pytest.approx(max(residuals(negatives[2], sensitivities(negatives[:2])).values()))
    assert residual_floor(negatives[:1]) is None


def test_calibration_sets_the_residual_threshold_above_every_clean_loras():
    scores = Scores(np.full((4, 1), 0.5, np.float32), np.zeros((4, 1), int))  # renders: not what is fitted here
    negatives = [_style(1.0), _style(2.0, 0.05), _style(0.5) | {"a": 0.1}]
    subjects = [Subject(f"clean-{i}", scores, scores, gains, profile=gains) for i, gains in enumerate(negatives)]
    thresholds = calibrate(subjects)
    floor = residual_floor(negatives)
    assert thresholds.likelihood_residual == pytest.approx(floor + LIKELIHOOD_MARGINS[0], abs=1e-6)
    assert thresholds.likelihood_sensitivity == sensitivities(negatives)
    assert thresholds.provenance["negative_likelihood_residual"] == pytest.approx(floor, abs=1e-6)
    assert Thresholds.from_dict(thresholds.to_dict()) == thresholds  # what calibration.json keeps


def _bent(strength: float) -> dict[str, float]:
    """A LoRA published at `strength` times its weight: every character moved further than the line, and not
    alike (what the fit leaves grows with the strength, as on the fixture world's clean LoRAs at 2x and 4x)."""
    return {cid: strength * s - 0.02 * strength ** 2 * (i % 2) for i, (cid, s) in enumerate(SENSITIVITY.items())}


def test_beyond_the_reach_calibration_saw_a_residual_is_read_in_proportion():
    reach = effect(_style(1.0, -0.1), SENSITIVITY)  # the furthest any clean LoRA moved the registry
    assert reach == pytest.approx((0.1 + 0.2) / 0.2, abs=1e-9)  # mean gain over mean sensitivity, in size
    raw = residuals(_bent(8.0), SENSITIVITY)
    assert max(raw.values()) > THRESHOLDS.likelihood_residual  # read whole, a clean LoRA at 8x matches someone
    scaled = residuals(_bent(8.0), SENSITIVITY, reach)
    share = reach / effect(_bent(8.0), SENSITIVITY)
    assert share < 0.3 and scaled == pytest.approx({cid: value * share for cid, value in raw.items()})
    assert max(scaled.values()) < THRESHOLDS.likelihood_residual
    within = _style(0.5, -0.05) | {"c": 0.2}  # a merge within reach is read whole
    assert residuals(within, SENSITIVITY, reach) == residuals(within, SENSITIVITY)


def test_the_effect_is_the_same_on_any_part_of_the_registry():
    # A style at 3x: on the least sensitive characters alone (a shortlist) or on all, three times the usual move.
    style = _style(3.0)
    assert effect(style, SENSITIVITY) == pytest.approx(3.0)
    assert effect({cid: style[cid] for cid in ("a", "b", "d")}, SENSITIVITY) == pytest.approx(3.0)
    assert effect({cid: style[cid] for cid in ("c", "e")}, SENSITIVITY) == pytest.approx(3.0)
    assert effect({"new": -2.0}, SENSITIVITY) == 0.0  # nothing known: read whole
    assert effect(style | {"a": float("nan")}, SENSITIVITY) == 0.0


def test_a_reach_that_is_not_a_number_reads_every_residual_whole():
    merged = _style(1.8, -0.1) | {"c": _style(1.8, -0.1)["c"] + 0.4}
    for reach in (None, 0.0, float("nan"), float("inf")):
        assert residuals(merged, SENSITIVITY, reach) == residuals(merged, SENSITIVITY)
    broken = effect_reach([_style(1.0), {"a": float("nan"), "b": -0.1, "c": -0.3}, _style(2.0)])
    assert broken is not None and np.isfinite(broken)  # a broken profile is no reach, not a NaN that flags all
    assert all(np.isfinite(v) for v in residuals(merged, SENSITIVITY, broken).values())


def test_a_clean_lora_published_at_many_times_its_weight_is_not_a_match():
    reach = 1.5
    bent = _gains(_bent(8.0))
    whole = replace(THRESHOLDS, likelihood_effect_reach=None)  # calibrated before the reach was kept
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=whole,
                  likelihood=bent).verdict == Verdict.QUARANTINE
    read = replace(THRESHOLDS, likelihood_effect_reach=reach)
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=read,
                  likelihood=bent).verdict == Verdict.ALLOW
    # A character under a style that moves the registry further than the reach is still seen, its residual read
    # in proportion and said so.
    merged = _style(2.0, -0.3) | {"c": _style(2.0, -0.3)["c"] + 0.9}
    decision = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=read, likelihood=_gains(merged))
    (reason,) = [r for r in decision.reasons if r.kind == "likelihood_match"]
    share = reach / effect(merged, SENSITIVITY)
    assert reason.character_id == "c" and reason.details["residual_read_at"] == pytest.approx(share, abs=1e-4)
    assert reason.details["residual"] == pytest.approx(residuals(merged, SENSITIVITY)["c"] * share, abs=1e-4)
    assert f"read at {share:.0%}" in reason.message


def test_calibration_keeps_the_largest_effect_any_clean_lora_had():
    scores = Scores(np.full((4, 1), 0.5, np.float32), np.zeros((4, 1), int))
    negatives = [_style(1.0), _style(2.0, 0.05), _style(0.5) | {"a": 0.1}]
    thresholds = calibrate([Subject(f"clean-{i}", scores, scores, g, profile=g) for i, g in enumerate(negatives)])
    together = sensitivities(negatives)
    assert thresholds.likelihood_effect_reach == pytest.approx(
        max(effect(gains, together) for gains in negatives), abs=1e-6)
    assert thresholds.likelihood_effect_reach == pytest.approx(effect(negatives[1], together), abs=1e-6)
    assert thresholds.likelihood_effect_reach == pytest.approx(effect_reach(negatives), abs=1e-6)
    assert Thresholds.from_dict(thresholds.to_dict()) == thresholds


def test_a_merged_style_hiding_a_characters_gain_is_quarantined_not_blocked():
    merged = _style(1.8, -0.1) | {"c": _style(1.8, -0.1)["c"] + 0.4}
    assert max(merged.values()) < THRESHOLDS.likelihood_quarantine  # the gain itself says nothing
    decision = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS, likelihood=_gains(merged))
    assert decision.verdict == Verdict.QUARANTINE  # the policy is block: a possible match goes to a person
    (reason,) = [r for r in decision.reasons if r.kind == "likelihood_match"]
    assert reason.character_id == "c" and reason.details["residual"] > THRESHOLDS.likelihood_residual
    assert "what it does to every character" in reason.message


def test_a_style_alone_or_an_uncalibrated_gate_adds_nothing():
    style = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS,
                   likelihood=_gains(_style(1.8, -0.1)))
    assert style.verdict == Verdict.ALLOW
    merged = _style(1.8, -0.1) | {"c": _style(1.8, -0.1)["c"] + 0.4}
    before = replace(THRESHOLDS, likelihood_residual=None, likelihood_sensitivity=None)
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=before,
                  likelihood=_gains(merged)).verdict == Verdict.ALLOW


def test_a_character_the_gain_already_matched_is_told_once():
    lifted = _style(0.2) | {"c": 0.5}
    decision = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS, likelihood=_gains(lifted))
    matches = [r for r in decision.reasons if r.kind == "likelihood_match"]
    assert [r.character_id for r in matches] == ["c"] and "residual" not in matches[0].details
    assert decision.verdict == Verdict.BLOCK  # the gain itself is clear: the policy applies


def test_a_character_lora_merged_with_a_style_is_quarantined_for_its_character(scanner, world, tmp_path):
    """A real merge (ΔW summed, ranks concatenated) of the fixture world's Mickey LoRA with a style, scanned: its
    whole gain misses it under the shipped calibration; the residual finds Mickey; its part alone shows Mickey
    clearly (probes/blocks.py)."""
    character, style = (read_lora(world.path(world_lora(world, id=i)["path"]))
                        for i in ("mickey_any_kohya", "style_stripes_kohya"))
    merged = Lora(character.format, merge(character, style).modules, dict(character.metadata), "F32")
    result = scanner.scan(write_lora(merged, tmp_path / "mickey+stripes.safetensors"), conclude=False)
    whole_only = replace(scanner.thresholds, likelihood_variant_quarantine=None, likelihood_variant_block=None)
    scanner.conclude(result, replace(whole_only, likelihood_residual=None, likelihood_sensitivity=None))
    assert result.verdict == Verdict.ALLOW  # the rule before the residual and the parts
    scanner.conclude(result, whole_only)
    assert result.verdict == Verdict.QUARANTINE
    (reason,) = [r for r in result.decision.reasons if r.kind == "likelihood_match"]
    assert reason.character_id == "mickey" and reason.details["residual"] >= scanner.thresholds.likelihood_residual
    scanner.conclude(result, scanner.thresholds)
    clear = [r for r in result.decision.reasons if r.kind == "likelihood_match" and r.details.get("part")]
    assert result.verdict == Verdict.BLOCK and [r.character_id for r in clear] == ["mickey"]
