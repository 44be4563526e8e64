"""The likelihood probe with the fixture world's real models: a character LoRA makes its own character's
references likelier than the base does, a clean LoRA makes no one's, the base is untouched afterwards,
and what a worker cannot read or a probe set does not ask for is not measured."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gate.intake import inspect_file
from probes.contract import outcome_from_json, outcome_to_json
from probes.likelihood import ReferenceSet
from tests.conftest import world_lora


@pytest.fixture(scope="module")
def references(world) -> list[ReferenceSet]:
    return [ReferenceSet(c["id"], c["name"], tuple(str(world.path(p)) for p in c["references"]))
            for c in world.characters(registered=True)]


def _probe(engine, world, lora, references):
    path = world.path(lora["path"])
    inspection = inspect_file(path)
    terms = {"trigger": inspection.metadata.trigger_phrases}
    return engine.probe(path, lora_format=inspection.layout.format, family=inspection.family.family,
                        modules=len(inspection.layout.modules), terms=terms, references=references)


def _whole(engine, world, lora, references):
    """The likelihood probe on the whole LoRA alone (no parts, no recovery): its screen and shortlist."""
    from safetensors.torch import load_file

    with engine.renderer.lora(load_file(str(world.path(lora["path"])))):
        return engine.likelihood.gains(references, [], engine.renderer.without_lora)


def test_a_character_lora_gains_most_on_its_own_character(engine, world, references):
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest", held_back=False)
    outcome = _probe(engine, world, lora, references)
    top, runner_up = outcome.likelihood[:2]
    assert top.character_id == lora["character"] and top.gain > 0.1, outcome.likelihood
    assert top.gain - runner_up.gain > 0.1
    assert len(top.reference_gains) == engine.probe_set.likelihood.references
    assert outcome.timings["likelihood"] > 0


def test_a_style_lora_makes_no_character_likelier(engine, world, references):
    outcome = _probe(engine, world, world_lora(world, kind="style", metadata_style="honest"), references)
    assert len(outcome.likelihood) == len(references)
    assert max(g.of_whole for g in outcome.likelihood) < 0, outcome.likelihood
    # Its parts alone (probes/blocks.py) are halves of a style: no character gains more than a sliver.
    assert max(g.gain for g in outcome.likelihood) < 0.02, outcome.likelihood


def test_the_base_is_measured_the_same_after_a_lora_was_applied(engine, world, references):
    probe = engine.likelihood
    few = references[:2]
    before = probe.lora_errors(few, [])  # no LoRA applied: the base, measured fresh
    _probe(engine, world, world_lora(world, kind="character", trigger=None, metadata_style="honest"), few)
    after = probe.lora_errors(few, [])  # the same batches again, after a LoRA came and went
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in after)
    # The cached base errors were measured in other batches (CPU kernels round a little differently by batch
    # shape); they agree far below any gain a decision reads.
    cached = probe.base_errors(few, [])
    assert all(abs(cached[k] - before[k]) <= 1e-5 * before[k] for k in before)


def test_with_the_lora_switched_off_the_base_is_measured_bit_for_bit(engine, world, references):
    from safetensors.torch import load_file

    probe, renderer = engine.likelihood, engine.renderer
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    base = probe.lora_errors(references[:2], ["a trigger"])  # no LoRA applied: the base, measured fresh
    with renderer.lora(load_file(world.path(lora["path"]))):
        applied = probe.lora_errors(references[:2], ["a trigger"])
        with renderer.without_lora():
            switched_off = probe.lora_errors(references[:2], ["a trigger"])
    assert switched_off == base and applied != base


def test_a_registry_larger_than_the_shortlist_is_screened_first(engine, world, references):
    spec = engine.likelihood.spec
    assert 0 < spec.shortlist < len(references)  # the fixture set screens its registry
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest", held_back=False)
    gains = _whole(engine, world, lora, references)
    full = [g for g in gains if not g.screened]
    assert len(gains) == len(references) and len(full) == spec.shortlist
    assert {len(g.reference_gains) for g in full} == {spec.references}
    assert {len(g.reference_gains) for g in gains if g.screened} == {spec.screen_references}
    assert gains[0].character_id == lora["character"] and not gains[0].screened
    # A character the LoRA's texts name joins the shortlist whatever its screened gain.
    weakest = gains[-1].character_id
    named = [replace(r, named=True) if r.character_id == weakest else r for r in references]
    measured = _whole(engine, world, lora, named)
    again = {g.character_id: g for g in measured}
    assert len(measured) == len(again) == len(references)  # each character once
    assert not again[weakest].screened and len(again[weakest].reference_gains) == spec.references
    assert sum(not g.screened for g in again.values()) == spec.shortlist + 1


def test_references_a_worker_cannot_read_are_left_out(engine, world, references, tmp_path):
    missing = ReferenceSet("ghost", "Ghost", (str(tmp_path / "gone.png"),))
    outcome = _probe(engine, world, world_lora(world, kind="concept", metadata_style="honest"),
                     [missing, references[0]])
    assert [g.character_id for g in outcome.likelihood] == [references[0].character_id]


def test_gains_travel_through_the_wire_format(engine, world, references):
    outcome = _probe(engine, world, world_lora(world, kind="concept", metadata_style="honest"), references[:3])
    back = outcome_from_json(outcome_to_json(outcome, engine.embedder_id))
    assert back.likelihood == outcome.likelihood and len(back.likelihood) == 3


def test_a_probe_set_without_the_table_measures_nothing(engine, world, references):
    saved = engine.likelihood
    engine.likelihood = None
    try:
        outcome = _probe(engine, world, world_lora(world, kind="concept", metadata_style="honest"), references)
    finally:
        engine.likelihood = saved
    assert outcome.likelihood == [] and "likelihood" not in outcome.timings
    assert len(outcome.lora_images) == len(outcome.probes)  # the renders are made all the same


def test_references_are_noised_by_the_training_schedule_whatever_the_sampler(engine, references):
    from diffusers import DPMSolverMultistepScheduler

    probe = engine.likelihood
    before = probe.lora_errors(references[:1], [])  # no LoRA applied: measured fresh, not cached
    sampler = engine.renderer.pipe.scheduler
    engine.renderer.pipe.scheduler = DPMSolverMultistepScheduler.from_config(sampler.config)
    engine.renderer.pipe.scheduler.set_timesteps(20)  # its add_noise would map 300 and 600 to its last sigma
    try:
        after = probe.lora_errors(references[:1], [])
    finally:
        engine.renderer.pipe.scheduler = sampler
    assert after == before
