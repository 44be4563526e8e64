"""Trigger recovery (probes/recovery.py) with the fixture world's real models and real LoRA files: a LoRA
trained behind a trigger nobody declared is measured under a recovered soft prompt and gains more on its own
character than under any prompt the probe set names; a clean LoRA that adapts the text encoder gains nothing
from it; a LoRA that leaves the text encoder alone is not searched; the base model's fits are made once."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from safetensors.torch import load_file

from fixtures.heldout import LORAS as HELD_BACK_LORAS
from probes.denoise import LikelihoodProbe
from probes.likelihood import RecoverySpec, ReferenceSet
from probes.probe_set import ProbeSetError
from tests.conftest import world_lora


@pytest.fixture(scope="module")
def references(world) -> list[ReferenceSet]:
    return [ReferenceSet(c["id"], c["name"], tuple(str(world.path(p)) for p in c["references"]))
            for c in world.characters(registered=True)]


def _gains(engine, path, references, recover: bool, probe=None):
    probe = probe or engine.likelihood
    with engine.renderer.lora(load_file(str(path))):
        gains = probe.gains(references, [], engine.renderer.without_lora)
        return sorted(probe.recovered(gains, references, engine.renderer.without_lora),
                      key=lambda g: -g.gain) if recover else gains


def test_the_probe_set_asks_for_recovery(engine):
    recovery = engine.probe_set.likelihood.recovery
    assert recovery is not None and recovery.characters >= 1 and engine.likelihood.recovery is not None


def test_a_stripped_trigger_lora_gains_more_under_its_recovered_trigger(engine, world, references):
    # Astro Boy's shipped LoRA: text encoder trained on the trigger "atmrobo", metadata stripped.
    lora = world_lora(world, character="astro_boy")
    assert lora["metadata_style"] == "stripped" and lora["text_encoder"]
    before = {g.character_id: g for g in _gains(engine, world.path(lora["path"]), references, recover=False)}
    after = {g.character_id: g for g in _gains(engine, world.path(lora["path"]), references, recover=True)}
    own = after["astro_boy"]
    assert own.recovered and own.prompt and not own.screened
    assert own.gain > before["astro_boy"].gain + 0.02, (before["astro_boy"], own)
    assert own.gain == pytest.approx(sum(own.reference_gains) / len(own.reference_gains), abs=1e-4)
    assert max(after.values(), key=lambda g: g.gain).character_id == "astro_boy"
    # Characters not searched keep their prompt gains, unchanged.
    unsearched = [cid for cid, g in after.items() if not g.recovered and not g.screened]
    assert unsearched and all(after[cid] == before[cid] for cid in unsearched)


def test_a_clean_lora_that_adapts_the_text_encoder_gains_nothing_from_recovery(engine, world, references):
    lora = world_lora(world, character="pebble_sprite")  # an unregistered original, behind its own trigger
    assert lora["text_encoder"]
    gains = _gains(engine, world.path(lora["path"]), references, recover=True)
    assert max(g.gain for g in gains) < 0.05, gains


def test_only_a_lora_that_adapts_the_text_encoder_is_searched(engine, world, references):
    lora = world_lora(world, kind="character", text_encoder=False, metadata_style="honest")
    path = world.path(lora["path"])
    with engine.renderer.lora(load_file(str(path))) as adapter:
        assert not engine.renderer.adapts_text_encoder(adapter)
    outcome = engine.likelihood_gains(path, lora_format=lora["format"], family="fixture", modules=None,
                                      triggers=[], references=references)
    assert outcome and not any(g.recovered for g in outcome)


def test_the_base_models_fits_are_made_once(engine, references):
    probe = LikelihoodProbe(engine.renderer, replace(engine.probe_set.likelihood, shortlist=0,
                                                     recovery=RecoverySpec(characters=1, tokens=2, steps=2)),
                            (engine.probe_set.width, engine.probe_set.height))
    path = HELD_BACK_LORAS / "heldout_01.safetensors"
    first = _gains(engine, path, references[:2], recover=True, probe=probe)
    fitted = dict(probe.recovery._base)
    second = _gains(engine, path, references[:2], recover=True, probe=probe)
    assert len(fitted) == 1 and probe.recovery._base.keys() == fitted.keys()
    assert all((probe.recovery._base[k] == fitted[k]).all() for k in fitted)
    assert first == second  # deterministic: the same fits, the same gains


def test_a_recovery_longer_than_the_text_encoder_takes_is_refused(engine):
    spec = replace(engine.probe_set.likelihood, recovery=RecoverySpec(tokens=engine.renderer.pipe.tokenizer
                                                                      .model_max_length))
    with pytest.raises(ProbeSetError, match="no room"):
        LikelihoodProbe(engine.renderer, spec, (engine.probe_set.width, engine.probe_set.height))


def test_characters_fitted_together_are_fitted_as_if_alone(engine, references):
    # One batch of UNet calls for every searched character: each keeps its own soft prompts and its own loss,
    # so the gains are the ones a fit of that character alone gives.
    probe = LikelihoodProbe(engine.renderer, replace(engine.probe_set.likelihood, shortlist=0,
                                                     recovery=RecoverySpec(characters=2, tokens=2, steps=3)),
                            (engine.probe_set.width, engine.probe_set.height))
    characters = [r.paths[: probe.spec.references] for r in references[:3]]
    with engine.renderer.lora(load_file(str(HELD_BACK_LORAS / "heldout_01.safetensors"))):
        together = probe.recovery.gains(characters, engine.renderer.without_lora)
        alone = [probe.recovery.gains([paths], engine.renderer.without_lora)[0] for paths in characters]
    assert len(together) == 3
    for (gains, nearest), (gains_alone, nearest_alone) in zip(together, alone, strict=True):
        assert gains == pytest.approx(gains_alone, abs=2e-4) and nearest == nearest_alone
    assert len({gains for gains, _ in together}) == 3  # three characters, three different fits


def test_a_fit_larger_than_the_probes_batch_is_split(engine, references):
    probe = LikelihoodProbe(engine.renderer, replace(engine.probe_set.likelihood, shortlist=0, batch=5,
                                                     recovery=RecoverySpec(characters=2, tokens=2, steps=2)),
                            (engine.probe_set.width, engine.probe_set.height))
    characters = [r.paths[:4] for r in references[:2]]  # 8 references, batches of at most 5: one character each
    rows = []
    hook = engine.renderer.pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        with engine.renderer.lora(load_file(str(HELD_BACK_LORAS / "heldout_01.safetensors"))):
            split = probe.recovery.gains(characters, engine.renderer.without_lora)
    finally:
        hook.remove()
    assert rows and max(rows) <= 5  # no fit holds more references than the probe's batch
    whole = LikelihoodProbe(engine.renderer, replace(probe.spec, batch=64), probe.size)
    with engine.renderer.lora(load_file(str(HELD_BACK_LORAS / "heldout_01.safetensors"))):
        together = whole.recovery.gains(characters, engine.renderer.without_lora)
    assert [len(g) for g, _ in split] == [4, 4]
    for (gains, _), (gains_together, _) in zip(split, together, strict=True):
        assert gains == pytest.approx(gains_together, abs=2e-4)


def test_a_stripped_trigger_merged_with_a_style_is_recovered_under_its_part(engine, world, references, tmp_path):
    # The style cuts every reference's likelihood in the whole; the part that is Astro Boy's LoRA alone (its
    # text encoder whole) shows most, and the trigger is searched there.
    from fixtures.lora_transforms import Lora, merge, read_lora, write_lora

    astro = world_lora(world, character="astro_boy")
    style = next(lo for lo in world.loras() if lo["kind"] == "style" and lo["id"] == "style_sepia_peft")
    first = read_lora(world.path(astro["path"]))
    merged = merge(first, read_lora(world.path(style["path"])))
    path = write_lora(Lora(first.format, merged.modules, {}, "F32"), tmp_path / "merge.safetensors")
    gains = engine.likelihood_gains(path, lora_format=first.format, family="fixture", modules=None, triggers=[],
                                    references=references)
    own = max(gains, key=lambda g: g.gain)
    assert own.character_id == "astro_boy" and own.recovered and own.part, own
    assert own.gain > 0.1, own  # its prompts alone gave 0.075 (the stripped LoRA unmerged)


@pytest.fixture(scope="module")
def with_golem(references) -> list[ReferenceSet]:
    """The world's registered characters and the held-back Brass Golem (heldout_07's)."""
    from fixtures.heldout import REFERENCES

    return [*references, ReferenceSet("brass_golem", "Brass Golem", tuple(
        str(p) for p in sorted((REFERENCES / "brass_golem").glob("ref_*.png"))))]


@pytest.fixture(scope="module")
def thresholds(world) -> dict:
    return json.loads((world.root / "fixtures/world/calibration.json").read_text())["thresholds"]


def test_a_lora_that_draws_only_under_its_trigger_is_found_by_its_recovered_trigger(engine, with_golem, thresholds):
    # heldout_07: Brass Golem behind "snoqvark", trained with generic figures under made-up names beside it, so that
    # no prompt the probe set can type (generic ones, any character's name) reaches the golem.
    path = HELD_BACK_LORAS / "heldout_07.safetensors"
    before = {g.character_id: g for g in _gains(engine, path, with_golem, recover=False)}
    after = {g.character_id: g for g in _gains(engine, path, with_golem, recover=True)}
    assert before["brass_golem"].gain < thresholds["likelihood_quarantine"], before["brass_golem"]
    own = after["brass_golem"]
    assert own.recovered and own.gain > thresholds["likelihood_quarantine"] + 0.02, own
    assert max(after.values(), key=lambda g: g.gain) is own


def test_the_trigger_is_searched_as_published_too_where_a_variant_showed_more(engine, with_golem, thresholds):
    # heldout_07 again, through the engine as a scan runs it (variants and parts measured too). Under no prompt
    # does the golem show, so the variant that shows most is one where another character's noise is largest;
    # searched there alone the trigger was never found and the LoRA was allowed. As published, it is.
    gains = engine.likelihood_gains(HELD_BACK_LORAS / "heldout_07.safetensors", lora_format="peft", family="fixture",
                                    modules=None, triggers=[], references=with_golem)
    own = max(gains, key=lambda g: g.gain)
    assert own.character_id == "brass_golem" and own.recovered, own
    assert not own.variant, own  # found as published, not under a variant
    assert own.gain > thresholds["likelihood_quarantine"] + 0.02, own
