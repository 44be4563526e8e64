"""An image's score for a character averages its few most similar reference views of it (gate.images.consensus):
agreement across references outweighs one chance pair, the answer is the same in blocks and with a shortlist,
a copy of a reference is still strong on its own, and thresholds fitted on other scores are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gate.detection.matching import References
from gate.images import screening
from gate.images.calibration import fit_image_thresholds
from gate.images.consensus import CONSENSUS, consensus_counts
from gate.images.screen import ImageCalibrationMissing, load_image_thresholds
from gate.images.screening import ImageThresholds, judge_set, match_images, nearest, scores
from tests.support import synthetic_references, unit_vectors


def _brute_force(images: np.ndarray, references: References, consensus: int):
    """The rule written the plain way: each reference view at the image's most similar view, each character the
    mean of its top k = min(consensus, 1 + sheets) of them; the row is the winner's most similar view."""
    views = images.reshape(len(images), -1, references.vectors.shape[1])
    per_row = (views @ references.vectors.T).max(axis=1)
    scores, best = np.zeros((len(images), len(references.character_ids))), []
    for c in range(len(references.character_ids)):
        rows = np.flatnonzero(references.owners == c)
        k = min(consensus, 1 + len(rows) // references.views)
        scores[:, c] = np.sort(per_row[:, rows], axis=1)[:, -k:].mean(axis=1)
        best.append(rows[per_row[:, rows].argmax(axis=1)])
    owner = scores.argmax(axis=1)
    return owner, scores.max(axis=1), np.array(best).T[np.arange(len(images)), owner]


def test_how_many_reference_views_a_score_averages_grows_with_the_sheets():
    owners = np.repeat([0, 1, 2], [10, 20, 80])  # one, two and eight sheets of 10 views
    assert consensus_counts(owners, 3, 10).tolist() == [2, 3, CONSENSUS]
    assert consensus_counts(owners, 3, 1).tolist() == [1, 1, 1]  # references held whole: the best pair
    assert consensus_counts(owners, 3, 10, consensus=1).tolist() == [1, 1, 1]


def test_agreement_across_references_outweighs_one_chance_pair():
    # Character a: two sheets of two views, one of which the picture resembles by chance (0.95), the rest not.
    # Character b: two sheets whose views the picture resembles each at about 0.9: a drawing of b.
    axes = np.eye(8, dtype=np.float32)
    picture = axes[0]
    chance = unit_vectors(0.95 * axes[0] + np.sqrt(1 - 0.95**2) * axes[1])
    alike = [unit_vectors(s * axes[0] + np.sqrt(1 - s * s) * axes[k])
             for s, k in ((0.93, 2), (0.9, 3), (0.87, 4), (0.5, 5))]
    references = References(("a", "b"), np.stack([chance, axes[6], axes[7], axes[6], *alike]),
                            np.repeat([0, 1], 4), views=2)
    best_pair = nearest(picture[None, :], references)
    assert best_pair[0].tolist() == [0] and best_pair[1][0] == pytest.approx(0.95)
    owner, score, row = nearest(picture[None, :], references, consensus=CONSENSUS)
    assert owner.tolist() == [1] and score[0] == pytest.approx(0.9, abs=1e-5)  # (0.93 + 0.9 + 0.87) / 3: k = 3
    assert row.tolist() == [4]  # the evidence's reference is b's own most similar one (0.93)
    # A pair below the copy threshold does not override the consensus; one above it does.
    fitted = {"score": 0.5, "block_score": 0.99, "false_rate": 0.01, "consensus": CONSENSUS}
    assert scores(picture[None, :], references, ImageThresholds(**fitted, pair_block_score=0.96))[0].tolist() == [1]
    assert scores(picture[None, :], references, ImageThresholds(**fitted, pair_block_score=0.94))[0].tolist() == [0]


@pytest.mark.parametrize("budget", [4, 4 * 90 * 7, 10**9])  # a reference view a block, seven, all of them
def test_a_block_at_a_time_and_a_shortlist_give_the_plain_rules_answer(monkeypatch, budget):
    rng = np.random.default_rng(11)
    references = synthetic_references(rng, list(rng.choice([1, 2, 3, 8], 60)), 4, 24)  # k from 2 to 6 by character
    rows = rng.choice(len(references.vectors), 30)
    images = unit_vectors(references.vectors[rows][:, None, :] + 0.1 * rng.normal(size=(30, 3, 24)))
    images = images.reshape(30, -1)  # three views an image, each near one reference view
    expected = _brute_force(images, references, CONSENSUS)
    monkeypatch.setattr(screening, "SIMILARITY_BYTES", budget)
    owner, score, row = nearest(images, references, shortlist=0, consensus=CONSENSUS)
    np.testing.assert_array_equal(owner, expected[0])
    np.testing.assert_allclose(score, expected[1], rtol=1e-5)
    np.testing.assert_array_equal(row, expected[2])
    # The single best pair comes from the same pass: with every pair counted as a copy, `scores` answers by it.
    every_pair = ImageThresholds(0.0, 0.0, 0.01, consensus=CONSENSUS, pair_block_score=-1.0)
    for got, want in zip(scores(images, references, every_pair), nearest(images, references), strict=True):
        np.testing.assert_array_equal(got, want)
    short = nearest(images, references, shortlist=8, consensus=CONSENSUS)  # 60 characters: shortlisted
    np.testing.assert_array_equal(short[0], owner)
    np.testing.assert_allclose(short[1], score, rtol=1e-5)
    np.testing.assert_array_equal(short[2], row)
    # A registry whose rows are out of order (no shortlist then) gives the same answers, rows mapped back.
    shuffled = rng.permutation(len(references.vectors))
    mixed = References(references.character_ids, references.vectors[shuffled], references.owners[shuffled],
                       views=references.views)
    owner, score, row = nearest(images, mixed, shortlist=8, consensus=CONSENSUS)
    np.testing.assert_array_equal(owner, expected[0])
    np.testing.assert_allclose(score, expected[1], rtol=1e-5)
    np.testing.assert_array_equal(shuffled[row], expected[2])


def test_a_broken_reference_vector_counts_as_no_resemblance_and_moves_no_other_character():
    rng = np.random.default_rng(4)
    references = synthetic_references(rng, [2, 2, 2], 3, 16)
    images = unit_vectors(references.vectors[[13]] + 0.05 * rng.normal(size=(1, 16)))  # close to c2's second sheet
    expected = nearest(images, references, consensus=CONSENSUS)
    broken = references.vectors.copy()
    broken[2] = np.nan  # one of c0's views, from an embedder that failed
    answer = nearest(images, References(references.character_ids, broken, references.owners, views=3),
                     consensus=CONSENSUS)
    assert answer[0].tolist() == expected[0].tolist() == [2] and np.isfinite(answer[1]).all()
    np.testing.assert_allclose(answer[1], expected[1], rtol=1e-6)


def test_a_copy_of_one_reference_is_a_strong_match_though_the_others_differ():
    rng = np.random.default_rng(2)
    references = References(tuple(f"c{i}" for i in range(4)), unit_vectors(rng.normal(size=(48, 32))),
                            np.repeat(np.arange(4), 12), views=3)  # four sheets a character, views unalike
    # Negatives that resemble all of a character's references a little, as a generic picture in its colours does.
    blends = references.vectors.reshape(4, 12, 32).sum(axis=1)[rng.integers(4, size=(200, 2))]
    negatives = unit_vectors(blends + 1.0 * rng.normal(size=(200, 2, 32))).reshape(200, -1)
    fitted = fit_image_thresholds(negatives, references, ["random"])
    assert fitted.consensus == CONSENSUS and fitted.pair_block_score > fitted.block_score
    copy = np.concatenate([references.vectors[7], unit_vectors(rng.normal(size=32))])[None, :]  # a crop of a sheet
    [match] = match_images(copy, references, fitted)
    assert (match.character_id, match.reference, match.strong) == ("c0", 7, True)
    assert match.score == pytest.approx(1.0, abs=1e-5)
    # Without the pair rule the same picture scores its character's consensus, which its unlike references
    # pull below strong.
    plain = ImageThresholds(**{**fitted.to_dict(), "pair_block_score": None})
    assert not any(m.strong for m in match_images(copy, references, plain))
    assert judge_set(copy, references, fitted, {"c0": "block"}, {"c0": "C0"}).verdict == "quarantine"


def test_thresholds_fitted_on_best_pair_scores_are_refused_as_stale(tmp_path):
    old = ImageThresholds(score=0.93, block_score=0.97, false_rate=0.01).to_dict()
    del old["consensus"], old["pair_block_score"]  # a calibration file written before the consensus (2026-12-07)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"images": {"thresholds": old, "embedder": "e+views"}}))
    with pytest.raises(ImageCalibrationMissing) as refused:
        load_image_thresholds(path, "e+views")
    assert refused.value.code == "calibration_stale" and "gate calibrate --images" in refused.value.message
    path.write_text(json.dumps({"images": {"thresholds": {**old, "consensus": CONSENSUS}, "embedder": "e+views"}}))
    assert load_image_thresholds(path, "e+views").consensus == CONSENSUS
