"""Judging a set of images: per-character counts against chance, strong matches, policies, captions' names."""

from __future__ import annotations

import numpy as np
import pytest

from gate.detection.matching import References
from gate.detection.screening import NameHit
from gate.images.calibration import fit_image_thresholds
from gate.images.screening import ImageThresholds, judge_set
from tests.support import synthetic_references, unit_vectors

# Two characters, one reference each, on orthogonal axes; an image's similarity to a character is its cosine.
REFS = References(("ultraman", "doraemon"), np.eye(4, dtype=np.float32)[:2], np.array([0, 1]), ("u.png", "d.png"))
POLICIES = {"ultraman": "block", "doraemon": "quarantine"}
NAMES = {"ultraman": "Ultraman", "doraemon": "Doraemon"}
TH = ImageThresholds(score=0.8, block_score=0.95, false_rate=0.01, false_positive_target=1e-3)


def _images(*similarities: tuple[int, float]) -> np.ndarray:
    """Unit vectors with cosine `s` to reference axis `axis` (the rest of the length on axis 3)."""
    rows = []
    for axis, s in similarities:
        row = np.zeros(4, np.float32)
        row[axis], row[3] = s, np.sqrt(1 - s * s)
        rows.append(row)
    return np.stack(rows)


def _generic(n: int) -> list[tuple[int, float]]:
    return [(2, 1.0)] * n  # orthogonal to both characters


def test_a_set_with_more_matches_than_chance_and_a_strong_one_gets_the_policy():
    assert TH.needed(40) == 4  # P(4 or more of 40 at 1%) < 1e-3 < P(3 or more)
    judged = judge_set(_images((0, 0.97), (0, 0.9), (0, 0.85), (0, 0.81), *_generic(36)), REFS, TH, POLICIES,
                       NAMES)
    assert judged.verdict == "block" and [r["kind"] for r in judged.reasons] == ["image_match"]
    reason = judged.reasons[0]
    assert (reason["character"], reason["images"], reason["strong"], reason["needed"]) == ("ultraman", 4, 1, 4)
    assert reason["message"].startswith("4 of 40 images show Ultraman (best score 0.970)")
    assert [m.index for m in judged.matches] == [0, 1, 2, 3]
    three = judge_set(_images((0, 0.9), (0, 0.85), (0, 0.81), *_generic(37)), REFS, TH, POLICIES, NAMES)
    assert three.verdict == "allow"  # one fewer, none strong: what chance gives


def test_more_than_chance_without_a_strong_match_quarantines_whatever_the_policy():
    judged = judge_set(_images((1, 0.9), (1, 0.85), (1, 0.82), (1, 0.81), *_generic(36)), REFS, TH, POLICIES,
                       NAMES)
    assert judged.verdict == "quarantine" and judged.reasons[0]["character"] == "doraemon"
    judged = judge_set(_images((0, 0.9), (0, 0.85), (0, 0.82), (0, 0.81), *_generic(36)), REFS, TH, POLICIES,
                       NAMES)
    assert judged.verdict == "quarantine"  # Ultraman's policy is block, but no match is strong


def test_one_image_is_at_most_quarantined_and_only_when_strong():
    assert judge_set(_images((0, 0.99)), REFS, TH, POLICIES, NAMES).verdict == "quarantine"
    lone = judge_set(_images((0, 0.9)), REFS, TH, POLICIES, NAMES)
    assert lone.verdict == "allow" and lone.reasons[0]["kind"] == "nothing_shown"
    assert "1 of 1 images resemble a registered character" in lone.reasons[0]["message"]


def test_matches_spread_over_characters_are_not_added_up():
    judged = judge_set(_images((0, 0.9), (1, 0.9), *_generic(38)), REFS, TH, POLICIES, NAMES)
    assert judged.verdict == "allow" and len(judged.matches) == 2


def test_a_character_chance_rarely_comes_near_needs_fewer_matches_than_one_it_often_does():
    # Calibration's near misses all came nearest Doraemon: chance's matches go there, so Ultraman's few matches
    # stand out (2 of 40) where Doraemon needs as many as any character would (4). Without near misses (an older
    # calibration) both need 4.
    shared = ImageThresholds(0.8, 0.95, 0.01, 1e-3, near_misses={"ultraman": 0, "doraemon": 100})
    assert shared.shares(REFS.character_ids) == pytest.approx({"ultraman": 1 / 102, "doraemon": 101 / 102})
    assert (shared.needed(40, 1 / 102), shared.needed(40, 101 / 102), TH.needed(40)) == (2, 4, 4)
    two = _images((0, 0.9), (0, 0.85), *_generic(38))
    judged = judge_set(two, REFS, shared, POLICIES, NAMES)
    assert judged.verdict == "quarantine" and (judged.reasons[0]["images"], judged.reasons[0]["needed"]) == (2, 2)
    assert judge_set(two, REFS, TH, POLICIES, NAMES).verdict == "allow"
    assert judge_set(_images((1, 0.9), (1, 0.85), (1, 0.82), *_generic(37)), REFS, shared, POLICIES,
                     NAMES).verdict == "allow"  # 3 of Doraemon: what chance gives him


def test_a_character_registered_since_calibration_counts_as_the_most_missed_one():
    shared = ImageThresholds(0.8, 0.95, 0.01, 1e-3, near_misses={"doraemon": 9})
    assert shared.shares(("ultraman", "doraemon")) == pytest.approx({"ultraman": 0.5, "doraemon": 0.5})


def test_the_same_image_sent_twice_counts_once():
    shared = ImageThresholds(0.8, 0.95, 0.01, 1e-3, near_misses={"ultraman": 0, "doraemon": 100})
    twice = _images((0, 0.9), (0, 0.9), *_generic(38))
    keys = ["same", "same", *[f"g{n}" for n in range(38)]]
    judged = judge_set(twice, REFS, shared, POLICIES, NAMES, keys=keys)
    assert judged.verdict == "allow" and len(judged.matches) == 2  # one image, matched twice: not over chance
    assert judge_set(twice, REFS, shared, POLICIES, NAMES).verdict == "quarantine"  # as two images


def test_a_caption_naming_a_character_quarantines_the_set():
    hit = NameHit("doraemon", "Doraemon", "caption", "a doraemon drawing")
    judged = judge_set(_images(*_generic(5)), REFS, TH, POLICIES, NAMES, [hit])
    assert judged.verdict == "quarantine" and judged.reasons[0]["kind"] == "caption_name"
    assert "Doraemon" in judged.reasons[0]["message"]


def test_calibration_sets_the_score_at_the_negatives_quantile_and_strong_above_all_of_them():
    rng = np.random.default_rng(0)
    negatives = _images(*[(int(rng.integers(2)), float(s)) for s in rng.uniform(0.0, 0.9, 500)])
    fitted = fit_image_thresholds(negatives, REFS, ["synthetic"])
    assert 0.88 < fitted.score < 0.9 and fitted.block_score > 0.9
    assert fitted.false_rate == pytest.approx(0.01, abs=0.003)
    # The quarter of negatives nearest some character, counted by which: here half lean to each axis.
    assert sum(fitted.near_misses.values()) == pytest.approx(125, abs=2)
    assert set(fitted.near_misses) == {"ultraman", "doraemon"} and min(fitted.near_misses.values()) > 40
    with pytest.raises(ValueError):
        fit_image_thresholds(negatives[:10], REFS, ["too few"])


def test_an_image_matches_by_its_most_similar_view():
    # Two views an image: its whole (generic) and a crop that shows Doraemon; rows hold the views stacked.
    whole, crop = _images((2, 1.0), (1, 0.97))
    judged = judge_set(np.concatenate([whole, crop])[None, :], REFS, TH, POLICIES, NAMES)
    assert [(m.character_id, round(m.score, 2), m.view) for m in judged.matches] == [("doraemon", 0.97, 1)]
    assert judge_set(np.concatenate([whole, whole])[None, :], REFS, TH, POLICIES, NAMES).matches == []


def test_nearest_a_block_of_references_at_a_time_is_nearest_over_them_all(monkeypatch):
    # A registry of thousands holds hundreds of thousands of reference views: the similarities are taken a block
    # at a time. Blocks of one reference or of all of them give the same nearest character, score and row.
    from gate.images import screening

    rng = np.random.default_rng(3)
    references = References(tuple(f"c{i}" for i in range(40)), unit_vectors(rng.normal(size=(200, 16))),
                            np.repeat(np.arange(40), 5))
    images = unit_vectors(rng.normal(size=(30, 3, 16))).reshape(30, -1)  # three views an image
    whole = screening.nearest(images, references)
    for budget in (4, 4 * 90 * 7, 10**9):  # one reference a block, seven, all
        monkeypatch.setattr(screening, "SIMILARITY_BYTES", budget)
        owner, score, row = screening.nearest(images, references)
        np.testing.assert_array_equal(owner, whole[0])
        np.testing.assert_array_equal(row, whole[2])
        np.testing.assert_allclose(score, whole[1], rtol=1e-6)  # the same sums, in other BLAS blocks
    expected = (images.reshape(30, 3, 16) @ references.vectors.T).max(axis=1)
    np.testing.assert_allclose(whole[1], expected.max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(whole[2], expected.argmax(axis=1))


def test_a_large_registry_is_matched_view_by_view_only_on_the_characters_nearest_by_their_sheets():
    from gate.images import screening

    rng = np.random.default_rng(5)
    references = synthetic_references(rng, [2] * 300, 4, 32)
    # Pictures close to one crop of one sheet each (a portrait of a character): found, shortlist or not.
    rows = rng.choice(len(references.vectors), 40)
    images = references.vectors[rows] + 0.05 * rng.normal(size=(40, 32)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    exact = screening.nearest(images, references, shortlist=0)
    short = screening.nearest(images, references, shortlist=8)
    np.testing.assert_array_equal(short[0], references.owners[rows])
    np.testing.assert_array_equal(short[0], exact[0])
    np.testing.assert_array_equal(short[2], exact[2])
    np.testing.assert_allclose(short[1], exact[1], rtol=1e-5)


def test_the_shortlist_is_drawn_by_the_sheets_whole():
    from gate.images import screening

    # Character 0's sheet is the nearest whole; character 1's crop is nearer still, but its sheet is far. With a
    # shortlist of one, the picture is compared view by view with character 0 alone.
    axes = np.eye(8, dtype=np.float32)
    sheet0, crop0 = 0.8 * axes[0] + 0.6 * axes[1], axes[0]
    sheet1, crop1 = axes[2], 0.99 * axes[3] + np.sqrt(1 - 0.99**2) * axes[2]
    others = [v for k in range(4, 8) for v in (axes[k], axes[k])]  # four characters orthogonal to the picture
    references = References(("c0", "c1", "c2", "c3", "c4", "c5"),
                            np.stack([sheet0, crop0, sheet1, crop1, *others]).astype(np.float32),
                            np.repeat(np.arange(6), 2), views=2)
    picture = (0.7 * axes[0] + 0.714 * axes[3])[None, :]
    picture /= np.linalg.norm(picture)
    assert screening.nearest(picture, references, shortlist=0)[0].tolist() == [1]  # its crop, over every view
    owner, score, row = screening.nearest(picture, references, shortlist=1)
    assert owner.tolist() == [0] and row.tolist() == [1]  # the sheet's own crop, the best of character 0
    assert score[0] == pytest.approx(float(picture[0] @ crop0))
