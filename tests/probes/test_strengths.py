"""A LoRA measured at other strengths (the probe set's `strengths`) with the fixture world's real models and real
LoRA files: one published at half (or double) its weight is measured where it was trained, exactly as the
original is at 1, including the text encoder; a clean LoRA gains nothing at any strength; the weight is put
back after."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fixtures.lora_transforms import read_lora, scaled, write_lora
from probes.likelihood import ReferenceSet
from tests.conftest import world_lora


@pytest.fixture(scope="module")
def references(world) -> list[ReferenceSet]:
    return [ReferenceSet(c["id"], c["name"], tuple(str(world.path(p)) for p in c["references"]))
            for c in world.characters(registered=True)]


def _as_published(engine, path: Path, references) -> dict[str, float]:
    """The whole LoRA's gains at strength 1, its trigger recovered where it adapts the text encoder: as the engine
    measures a character among the strongest it searches as published (the one character here always is)."""
    probe, base_model = engine.likelihood, engine.renderer.without_lora
    with engine.renderer.lora(load_file(str(path))) as adapter:
        gains = probe.gains(references, [], base_model)
        if engine.renderer.adapts_text_encoder(adapter):
            gains = probe.recovered(gains, references, base_model)
        return {g.character_id: g.gain for g in gains}


def _gains(engine, path: Path, fmt: str, references):
    return engine.likelihood_gains(path, lora_format=fmt, family="fixture", modules=None, triggers=[],
                                   references=references)


def test_the_probe_set_measures_other_strengths(engine):
    assert {0.5, 2.0} <= set(engine.probe_set.likelihood.strengths)


@pytest.mark.parametrize(("character", "scale"), [("mario", 0.5), ("ultraman", 2.0)])
def test_a_rescaled_lora_is_measured_at_the_strength_that_undoes_its_scale(engine, world, references, tmp_path,
                                                                           character, scale):
    # Mario's LoRA trains the text encoder too: set_adapters must weigh it with the UNet for the gains to agree,
    # and its trigger is recovered at the strength that shows most.
    lora = world_lora(world, character=character)
    original = world.path(lora["path"])
    rescaled = write_lora(scaled(read_lora(original), scale), tmp_path / "rescaled.safetensors")
    expected = next(g for g in _gains(engine, original, lora["format"], references) if g.character_id == character)
    own = next(g for g in _gains(engine, rescaled, lora["format"], references) if g.character_id == character)
    assert expected.strength == 1.0 and own.strength == 1 / scale, (expected, own)
    assert own.gain == pytest.approx(expected.gain, abs=1e-4) and own.recovered == expected.recovered
    # Beside it, the whole as published, on all the character's references, far below.
    as_published = _as_published(engine, rescaled, [r for r in references if r.character_id == character])[character]
    assert own.gain > own.of_whole + 0.03 and own.of_whole == pytest.approx(as_published, abs=1e-4)


def test_a_clean_lora_gains_nothing_at_any_strength(engine, world, references):
    lora = world_lora(world, kind="concept")
    gains = _gains(engine, world.path(lora["path"]), lora["format"], references)
    assert max(g.gain for g in gains) < 0.05, gains[:3]


def test_the_weight_is_put_back_after_another_strength(engine, world, references):
    lora = world_lora(world, character="ultraman")
    with engine.renderer.lora(load_file(str(world.path(lora["path"])))) as adapter:
        before = engine.likelihood.gains(references, [], engine.renderer.without_lora)
        with engine.renderer.at_strength(adapter, 2.0):
            doubled = engine.likelihood.gains(references, [], engine.renderer.without_lora)
        after = engine.likelihood.gains(references, [], engine.renderer.without_lora)
    assert after == before and doubled != before


def test_one_shortlist_is_drawn_over_the_variants(engine, world, references, tmp_path):
    # Every variant screens every character; only the strongest screened gains of all, and a character the LoRA
    # names, are measured in full, each under the variant that screened it strongest.
    spec = engine.probe_set.likelihood
    assert 0 < spec.shortlist < len(references)
    lora = world_lora(world, character="ultraman")
    halved = write_lora(scaled(read_lora(world.path(lora["path"])), 0.5), tmp_path / "halved.safetensors")

    def full(asked):
        with engine.renderer.lora(load_file(str(halved))) as adapter:
            variants = [(partial(engine.renderer.at_strength, adapter, s), {"strength": s}) for s in spec.strengths]
            measured, _ = engine._variant_gains(variants, asked, [])
        assert [len(gains) for gains in measured] == [len(references)] * len(variants)
        assert {len(g.reference_gains) for gains in measured for g in gains if g.screened} == {spec.screen_references}
        return [(g.character_id, g.strength) for gains in measured for g in gains if not g.screened]

    shortlisted = full(references)
    assert len(shortlisted) == len({cid for cid, _ in shortlisted}) == spec.shortlist
    assert ("ultraman", 2.0) in shortlisted  # the strength that undoes the halving showed him strongest
    named = next(r.character_id for r in references if r.character_id not in dict(shortlisted))
    again = full([replace(r, named=r.character_id == named) for r in references])
    assert len([s for cid, s in again if cid == named]) == 1
    assert [pair for pair in again if pair[0] != named] == shortlisted
