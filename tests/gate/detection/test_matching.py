"""Matching, calibration and decisions on synthetic vectors: the rules, without rendering."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from gate.detection.calibration import LIKELIHOOD_MARGINS, Subject, calibrate
from gate.detection.decisions import CharacterPolicy, Verdict, decide
from gate.detection.matching import References, Thresholds, chance_count, match_characters, score
from gate.detection.screening import NameHit
from probes.likelihood import CharacterGain

DIM = 16


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((3, DIM)))
    refs = {cid: _unit(centres[i] + 0.05 * rng.standard_normal((4, DIM))) for i, cid in enumerate("abc")}
    return rng, centres, References.stack(refs)


def _near(rng, centre, n, noise=0.05):
    return _unit(centre + noise * rng.standard_normal((n, DIM)))


def _noise(rng, n):
    return _unit(rng.standard_normal((n, DIM)))


THRESHOLDS = Thresholds(render_score=0.8, lift=0.1, quarantine_matches=2, block_matches=3, block_score=0.9)


def test_renders_near_a_character_match_it(world):
    rng, centres, refs = world
    lora = np.concatenate([_near(rng, centres[1], 5), _noise(rng, 5)])
    matches = match_characters(score(lora, refs), score(_noise(rng, 10), refs), refs, THRESHOLDS)
    assert [(m.character_id, m.matched) for m in matches] == [("b", 5)]
    assert matches[0].best_render < 5 and refs.owners[matches[0].best_reference] == 1


def test_what_the_base_already_draws_is_not_the_loras_doing(world):
    rng, centres, refs = world
    drawn = _near(rng, centres[0], 6)
    assert match_characters(score(drawn, refs), score(drawn, refs), refs, THRESHOLDS) == []


def test_calibration_puts_every_negative_below_the_block_bar(world):
    rng, centres, refs = world
    base = score(_noise(rng, 40), refs)
    subjects = [Subject("base", base, base)] + [
        Subject(f"clean{i}", score(_noise(rng, 40), refs), base) for i in range(3)]
    thresholds = calibrate(subjects)
    negatives = np.concatenate([s.lora.similarity.max(axis=1) for s in subjects])
    assert thresholds.block_score > negatives.max()
    assert np.mean(negatives >= thresholds.render_score) <= 0.02
    assert thresholds.quarantine_matches >= 2 and thresholds.block_matches > thresholds.quarantine_matches
    assert thresholds.provenance["negative_renders"] == 160
    # A LoRA that draws character c in many renders clears both bars.
    positive = score(np.concatenate([_near(rng, centres[2], 8, 0.01), _noise(rng, 32)]), refs)
    [match] = match_characters(positive, base, refs, thresholds)
    assert match.character_id == "c" and match.matched >= thresholds.block_matches


def _binomial_tail(n: int, p: float, at_least: int) -> float:
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(at_least, n + 1))


@pytest.mark.parametrize(("rendered", "rate", "target"), [(10, 0.05, 0.01), (45, 0.0076, 0.01), (200, 0.02, 0.001),
                                                          (40, 0.3, 0.05), (3, 0.5, 0.01)])
def test_chance_count_is_the_fewest_renders_chance_reaches_within_the_target(rendered, rate, target):
    count = chance_count(rendered, rate, target)
    assert count <= rendered + 1
    if count <= rendered:
        assert _binomial_tail(rendered, rate, count) <= target
    assert count == 1 or _binomial_tail(rendered, rate, count - 1) > target
    assert chance_count(rendered * 2, rate, target) >= count  # more renders, more chances
    assert chance_count(rendered, 0.0, target) == 1 and chance_count(rendered, 1.0, target) == rendered + 1


def test_chance_count_holds_where_floats_underflow():
    # Many renders: (1 - rate) ** n underflows to 0; the answer is still a few deviations above the mean (800).
    assert 800 < chance_count(40_000, 0.02, 0.01) < 900
    # A tiny target: 1 - P(below) cannot resolve 1e-17, the tail summed directly can (exact: 19, by fractions).
    exact = next(m for m in range(101) if _binomial_tail(100, Fraction(1, 100), m) <= 1e-17)
    assert chance_count(100, 0.01, 1e-17) == exact == 19
    for bad in ((10, float("nan"), 0.01), (10, 0.1, 0.0), (10, 0.1, 1.0), (10, 1.5, 0.01)):
        with pytest.raises(ValueError):
            chance_count(*bad)


def test_calibration_records_how_often_a_negative_render_matches(world):
    rng, centres, refs = world
    base = score(_noise(rng, 40), refs)
    drifting = score(np.concatenate([_near(rng, centres[0], 1, 0.01), _noise(rng, 39)]), refs)
    thresholds = calibrate([Subject("base", base, base), Subject("drift", drifting, base)])
    matched = thresholds.provenance["negative_matched_renders"]
    assert matched >= 1 and thresholds.render_false_rate == pytest.approx(matched / 80)
    assert thresholds.false_positive_target == 0.01
    assert thresholds.quarantine_matches == max(2, max(thresholds.provenance["negative_matches"].values()) + 1)


def test_more_matching_renders_are_needed_where_chance_would_reach_the_count(world):
    # 5% of clean renders match some character: of 10 renders, chance reaches 3 for 1.2% of clean LoRAs.
    chancy = replace(THRESHOLDS, render_false_rate=0.05, false_positive_target=0.01)
    assert chancy.needed_matches(10) == (4, 5) and THRESHOLDS.needed_matches(10) == (2, 3)
    verdicts = [decide(matches=_match(*world, n), name_hits=[], characters=POLICIES, thresholds=chancy).verdict
                for n in (3, 4, 5)]
    assert verdicts == [Verdict.ALLOW, Verdict.QUARANTINE, Verdict.BLOCK]
    assert decide(matches=_match(*world, 3), name_hits=[], characters=POLICIES,
                  thresholds=THRESHOLDS).verdict is Verdict.BLOCK


def _match(rng, centres, refs, count):
    lora = score(np.concatenate([_near(rng, centres[0], count, 0.01), _noise(rng, 10 - count)]), refs)
    return match_characters(lora, score(_noise(rng, 10), refs), refs, THRESHOLDS)


POLICIES = {"a": CharacterPolicy("a", "Aman", Verdict.BLOCK), "b": CharacterPolicy("b", "Bee", Verdict.QUARANTINE)}


def test_clear_match_applies_the_characters_policy(world):
    decision = decide(matches=_match(*world, 5), name_hits=[], characters=POLICIES, thresholds=THRESHOLDS)
    assert decision.verdict is Verdict.BLOCK
    assert "clear match with Aman: 5 of 10" in decision.reasons[0].message


def test_uncertain_match_goes_to_quarantine_not_block(world):
    decision = decide(matches=_match(*world, 2), name_hits=[], characters=POLICIES, thresholds=THRESHOLDS)
    assert decision.verdict is Verdict.QUARANTINE
    assert decision.reasons[0].details["certainty"] == "possible"


def test_a_single_render_is_not_enough_unless_the_metadata_names_the_character(world):
    single = _match(*world, 1)
    assert decide(matches=single, name_hits=[], characters=POLICIES, thresholds=THRESHOLDS).verdict is Verdict.ALLOW
    hit = NameHit("a", "Aman", "title", "Aman v2")
    decision = decide(matches=single, name_hits=[hit], characters=POLICIES, thresholds=THRESHOLDS)
    assert decision.verdict is Verdict.QUARANTINE
    assert "metadata names it too" in decision.reasons[0].message


def test_a_name_alone_is_reported_but_allowed():
    hit = NameHit("b", "Bee", "title", "Bee tree pack")
    decision = decide(matches=[], name_hits=[hit], characters=POLICIES, thresholds=THRESHOLDS)
    assert decision.verdict is Verdict.ALLOW
    assert decision.reasons[0].kind == "metadata_name" and "no probe render shows it" in decision.reasons[0].message


def test_a_name_is_told_once_per_character(world):
    hit = NameHit("a", "Aman", "file name", "aman_v2")
    likely = [CharacterGain("a", 0.5, "Aman", (0.5,))]
    thresholds = replace(THRESHOLDS, likelihood_quarantine=0.1, likelihood_block=0.3)
    decision = decide(matches=_match(*world, 1), name_hits=[hit], characters=POLICIES, thresholds=thresholds,
                      likelihood=likely)
    assert [r.kind for r in decision.reasons] == ["visual_match", "likelihood_match"]
    assert ["names it too" in r.message for r in decision.reasons] == [True, False]
    alone = decide(matches=[], name_hits=[hit], characters=POLICIES, thresholds=thresholds, likelihood=likely)
    assert "names it too" in alone.reasons[0].message  # no visual reason: the likelihood one tells it


def test_a_file_decided_without_rendering_never_claims_a_probe_ran():
    hit = NameHit("a", "Aman", "title", "Aman v2")
    decision = decide(matches=[], name_hits=[hit], characters=POLICIES, thresholds=THRESHOLDS,
                      blocklisted="abc…, blocked by a moderator", probed=False, undeclared_trigger=True)
    assert decision.verdict is Verdict.BLOCK
    messages = [r.message for r in decision.reasons]
    assert len(messages) == 2 and not any("probe render" in m for m in messages)
    assert "no probe ran" in messages[1]


def test_a_name_with_a_trigger_nobody_declared_goes_to_a_person_never_to_a_block():
    """A LoRA that adapts the text encoder and declares no trigger may draw only for a word no probe said: a
    name of a registered character is then a strong hint with missing evidence."""
    hit = NameHit("a", "Aman", "file name", "aman_v2")  # "a"'s policy is block
    decision = decide(matches=[], name_hits=[hit], characters=POLICIES, thresholds=THRESHOLDS,
                      undeclared_trigger=True)
    assert decision.verdict is Verdict.QUARANTINE
    reason = decision.reasons[0]
    assert reason.kind == "metadata_name" and reason.details["undeclared_trigger"] is True
    assert "without declaring a trigger" in reason.message and reason.character_id == "a"
    # A moderator who allowed these weights before is not asked again on the same evidence.
    cleared = decide(matches=[], name_hits=[hit], characters=POLICIES, thresholds=THRESHOLDS,
                     undeclared_trigger=True, cleared={"a"})
    assert cleared.verdict is Verdict.ALLOW
    # No name, or a name of a character nobody registered: nothing to hint at.
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS,
                  undeclared_trigger=True).verdict is Verdict.ALLOW
    stranger = NameHit("z", "Zed", "file name", "zed")
    assert decide(matches=[], name_hits=[stranger], characters=POLICIES, thresholds=THRESHOLDS,
                  undeclared_trigger=True).verdict is Verdict.ALLOW


def test_blocklist_and_not_probed():
    blocked = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS, blocklisted="abc")
    assert blocked.verdict is Verdict.BLOCK
    unprobed = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS, not_probed="LoHa")
    assert unprobed.verdict is Verdict.QUARANTINE and unprobed.reasons[0].kind == "not_probed"


# The likelihood probe's decisions: gains (relative denoising-error cuts on a character's references).
LIKELY = Thresholds(render_score=0.8, lift=0.1, quarantine_matches=2, block_matches=3, block_score=0.9,
                    likelihood_quarantine=0.05, likelihood_block=0.10)


def _gain(character: str, gain: float) -> CharacterGain:
    return CharacterGain(character, gain, "a character", (gain, gain))


def test_a_large_likelihood_gain_applies_the_policy_a_smaller_one_quarantines():
    clear = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY,
                   likelihood=[_gain("a", 0.2), _gain("b", -0.1)])
    assert clear.verdict is Verdict.BLOCK
    [reason] = clear.reasons
    assert (reason.kind, reason.character_id) == ("likelihood_match", "a")
    assert "clear match with Aman" in reason.message
    possible = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY, likelihood=[_gain("a", 0.07)])
    assert possible.verdict is Verdict.QUARANTINE and possible.reasons[0].details["certainty"] == "possible"
    below = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY, likelihood=[_gain("a", 0.04)])
    assert below.verdict is Verdict.ALLOW and [r.kind for r in below.reasons] == ["nothing_shown"]
    # An allowed LoRA has its reason too: what was found, against what it would have taken.
    assert "+4.0% for Aman" in below.reasons[0].message and "quarantines from" in below.reasons[0].message


def test_likelihood_gains_are_ignored_until_calibrated_and_for_unknown_characters():
    gains = [_gain("a", 0.5), _gain("zz", 0.5)]
    uncalibrated = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=THRESHOLDS, likelihood=gains)
    assert [r.kind for r in uncalibrated.reasons] == ["nothing_shown"]
    assert "likelihood" not in uncalibrated.reasons[0].message  # no threshold: the gains are not weighed
    decision = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY, likelihood=gains)
    assert [r.character_id for r in decision.reasons] == ["a"]


def test_a_lora_that_makes_most_characters_likelier_is_only_quarantined():
    policies = {c: CharacterPolicy(c, c.upper(), Verdict.BLOCK) for c in "abcdef"}
    decision = decide(matches=[], name_hits=[], characters=policies, thresholds=LIKELY,
                      likelihood=[_gain(c, 0.3) for c in "abcd"])
    assert decision.verdict is Verdict.QUARANTINE
    assert all("shared style" in r.message for r in decision.reasons) and len(decision.reasons) == 4


def test_screened_gains_count_towards_a_shared_style_but_decide_nothing():
    policies = {c: CharacterPolicy(c, c.upper(), Verdict.BLOCK) for c in "abcdef"}
    screened = [replace(_gain(c, 0.3), screened=True) for c in "bcd"]
    alone = decide(matches=[], name_hits=[], characters=policies, thresholds=LIKELY, likelihood=screened)
    # Measured on the screen's few references only: not the calibration's footing, so nothing flags.
    assert [r.kind for r in alone.reasons] == ["nothing_shown"]
    decision = decide(matches=[], name_hits=[], characters=policies, thresholds=LIKELY,
                      likelihood=[_gain("a", 0.3), *screened])
    assert [r.character_id for r in decision.reasons] == ["a"]
    assert decision.verdict is Verdict.QUARANTINE and "shared style" in decision.reasons[0].message


def test_a_name_with_a_likelihood_match_is_not_reported_as_a_bare_name():
    hit = NameHit("a", "Aman", "title", "Aman v2")
    decision = decide(matches=[], name_hits=[hit], characters=POLICIES, thresholds=LIKELY, likelihood=[_gain("a", 0.2)])
    assert [r.kind for r in decision.reasons] == ["likelihood_match"]
    assert "its metadata names it too (title: 'Aman v2')" in decision.reasons[0].message


def test_likelihood_thresholds_sit_above_every_clean_loras_gain(world):
    rng, _, refs = world
    base = score(_noise(rng, 10), refs)
    subjects = [Subject("base", base, base),
                Subject("style", score(_noise(rng, 10), refs), base, {"a": -0.2, "b": 0.03}),
                Subject("concept", score(_noise(rng, 10), refs), base, {"a": -0.01, "c": -0.05})]
    thresholds = calibrate(subjects)
    assert thresholds.likelihood_quarantine == pytest.approx(0.03 + LIKELIHOOD_MARGINS[0])
    assert thresholds.likelihood_block == pytest.approx(0.03 + LIKELIHOOD_MARGINS[1])
    assert thresholds.provenance["negative_likelihood_gains"] == {"style": 0.03, "concept": -0.01}
    # Clean LoRAs that gained nothing leave the floor at zero: the base model itself gains nothing.
    floor = calibrate([Subject("base", base, base), Subject("style", base, base, {"a": -0.3})])
    assert floor.likelihood_quarantine == pytest.approx(LIKELIHOOD_MARGINS[0])
    # No negative measured it (an engine without the likelihood probe): no thresholds, the signal is off.
    assert calibrate([Subject("base", base, base)]).likelihood_quarantine is None
    assert thresholds.likelihood_variant_quarantine is None  # no part measured: parts are not judged


def test_variant_thresholds_sit_above_every_clean_loras_variant_and_whole(world):
    rng, _, refs = world
    base = score(_noise(rng, 10), refs)
    subjects = [Subject("base", base, base),
                Subject("style", score(_noise(rng, 10), refs), base, {"a": -0.2}, variant_gains={"a": 0.04}),
                Subject("concept", score(_noise(rng, 10), refs), base, {"a": 0.02}, variant_gains={})]
    thresholds = calibrate(subjects)
    assert thresholds.likelihood_quarantine == pytest.approx(0.02 + LIKELIHOOD_MARGINS[0])
    assert thresholds.likelihood_variant_quarantine == pytest.approx(0.04 + LIKELIHOOD_MARGINS[0])
    assert thresholds.likelihood_variant_block == pytest.approx(0.04 + LIKELIHOOD_MARGINS[1])
    # Parts measured but none beat its whole: the wholes bound the parts.
    only_wholes = calibrate([Subject("base", base, base),
                             Subject("concept", base, base, {"a": 0.02}, variant_gains={})])
    assert only_wholes.likelihood_variant_quarantine == pytest.approx(0.02 + LIKELIHOOD_MARGINS[0])


def test_an_evidence_row_says_why_it_counted_or_not():
    from gate.detection.evidence import counted

    names = {"a": "Aman", "b": "Bee"}
    row = {"character": "a", "nearest": "a", "score": 0.85, "base_score": 0.70}
    assert counted(row, THRESHOLDS, names) == (True, "counted: a match for Aman")
    assert counted({**row, "nearest": "b"}, THRESHOLDS, names) == (
        False, "not counted for Aman: the render is nearer Bee")
    assert "below the threshold 0.800" in counted({**row, "score": 0.75}, THRESHOLDS, names)[1]
    assert "under the 0.100 needed" in counted({**row, "base_score": 0.80}, THRESHOLDS, names)[1]
    assert counted(row, None, names)[0] is None


def test_a_gain_under_a_recovered_trigger_says_so_and_survives_the_wire():
    recovered = CharacterGain("a", 0.2, "xk cd", (0.2, 0.2), recovered=True)
    assert CharacterGain.from_dict(recovered.to_dict()) == recovered
    assert CharacterGain.from_dict({**_gain("a", 0.2).to_dict(), "recovered": None}).recovered is False
    decision = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY, likelihood=[recovered])
    [reason] = decision.reasons
    assert decision.verdict is Verdict.BLOCK and reason.details["recovered_trigger"] == "xk cd"
    assert "under a recovered trigger" in reason.message and "'xk cd'" in reason.message
    # A gain under a prompt names its prompt, and no recovered trigger.
    [plain] = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY,
                     likelihood=[_gain("a", 0.2)]).reasons
    assert "recovered_trigger" not in plain.details and "prompt 'a character'" in plain.message


def test_a_gain_found_on_one_part_of_a_merge_is_judged_by_the_variants_thresholds():
    part = CharacterGain("a", 0.2, "a character", (0.2, 0.2), part="part 1 of 2: rank components 1-8",
                         whole_gain=-0.1)
    assert CharacterGain.from_dict(part.to_dict()) == part and part.of_whole == -0.1
    with_parts = replace(LIKELY, likelihood_variant_quarantine=0.08, likelihood_variant_block=0.15)
    [reason] = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=with_parts, likelihood=[part]).reasons
    assert reason.verdict is Verdict.BLOCK and reason.details["part"] == "part 1 of 2: rank components 1-8"
    assert "measured on part 1 of 2: rank components 1-8 of the LoRA" in reason.message
    assert "possible from 8%, clear from 15%" in reason.message
    # Between the parts' thresholds: a person looks.
    weaker = replace(part, gain=0.1)
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=with_parts,
                  likelihood=[weaker]).verdict is Verdict.QUARANTINE
    # A calibration without part thresholds judges the whole LoRA's gain alone: here, nothing.
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY,
                  likelihood=[part]).verdict is Verdict.ALLOW


def test_a_gain_at_another_strength_is_judged_by_the_variants_thresholds_and_says_so():
    doubled = CharacterGain("a", 0.16, "a character", (0.16, 0.16), whole_gain=0.03, strength=2.0)
    assert CharacterGain.from_dict(doubled.to_dict()) == doubled and doubled.of_whole == 0.03
    assert CharacterGain.from_dict({k: v for k, v in _gain("a", 0.2).to_dict().items() if k != "strength"}
                                   ).strength == 1.0  # results from before strengths read as published
    fitted = replace(LIKELY, likelihood_variant_quarantine=0.08, likelihood_variant_block=0.15)
    [reason] = decide(matches=[], name_hits=[], characters=POLICIES, thresholds=fitted, likelihood=[doubled]).reasons
    assert reason.verdict is Verdict.BLOCK and reason.details["strength"] == 2.0 and reason.details["gain"] == 0.16
    assert "applied at strength 2, as its users can load it (at 1: +3%)" in reason.message
    assert "possible from 8%, clear from 15%" in reason.message and "part" not in reason.details
    # Between the variants' thresholds: a person looks.
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=fitted,
                  likelihood=[replace(doubled, gain=0.1)]).verdict is Verdict.QUARANTINE
    # A calibration that fitted no variants judges the whole as published: here, nothing.
    assert decide(matches=[], name_hits=[], characters=POLICIES, thresholds=LIKELY,
                  likelihood=[doubled]).verdict is Verdict.ALLOW


def test_variant_thresholds_cover_every_kind_of_variant_and_read_old_calibrations(world):
    from gate.detection.calibration import outcome_subject

    rng, _, refs = world
    # One clean LoRA's strongest measurement of "a" was at half strength, another's of "b" on a part.
    vectors = _noise(rng, 10)
    base = score(vectors, refs)

    def subject(name, gains, scope):
        return outcome_subject(name, SimpleNamespace(likelihood=gains, lora_embeddings=vectors,
                                                     base_embeddings=vectors, scope=scope), refs)

    halved = subject("halved", [CharacterGain("a", 0.03, "a character", (0.03,), whole_gain=0.01, strength=0.5)],
                     {"strengths": [0.5, 2.0], "blocks": True})
    split = subject("split", [CharacterGain("b", 0.04, "a character", (0.04,), whole_gain=-0.1, part="part 1 of 2")],
                    {"strengths": [0.5, 2.0], "blocks": True})
    assert halved.gains == {"a": 0.01} and halved.profile == {"a": 0.01}  # the whole as published
    assert halved.variant_gains == {"a": 0.03} and split.variant_gains == {"b": 0.04}
    thresholds = calibrate([Subject("base", base, base), halved, split])
    assert thresholds.likelihood_quarantine == pytest.approx(0.01 + LIKELIHOOD_MARGINS[0])
    assert thresholds.likelihood_variant_quarantine == pytest.approx(0.04 + LIKELIHOOD_MARGINS[0])
    assert thresholds.provenance["negative_likelihood_variant_gains"] == {"halved": 0.03, "split": 0.04}
    # A probe set that measures no variants: none fitted.
    plain = subject("plain", [_gain("a", 0.01)], {})
    assert plain.variant_gains is None
    assert calibrate([Subject("base", base, base), plain]).likelihood_variant_quarantine is None
    # A calibration written before 2026-12-07 named them for the parts.
    old = {k: v for k, v in thresholds.to_dict().items() if not k.startswith("likelihood_variant")}
    old.update(likelihood_part_quarantine=0.09, likelihood_part_block=0.14)
    read = Thresholds.from_dict(old)
    assert (read.likelihood_variant_quarantine, read.likelihood_variant_block) == (0.09, 0.14)
