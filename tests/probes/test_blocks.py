"""A merged LoRA's parts (probes/blocks.py) with the fixture world's real models and real merged files: the rank
components split at the merge's seam, each group switched on alone and put back bit for bit, and the character
a full-strength style hid is measured on its own part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fixtures.lora_transforms import Lora, merge, read_lora, scaled, write_lora
from probes.blocks import only, rank_blocks
from probes.likelihood import CharacterGain, ReferenceSet, strongest_of
from tests.conftest import world_lora


@pytest.fixture(scope="module")
def references(world) -> list[ReferenceSet]:
    return [ReferenceSet(c["id"], c["name"], tuple(str(world.path(p)) for p in c["references"]))
            for c in world.characters(registered=True)]


def _merged(world, tmp_path, character: str, style: str) -> tuple[Path, int]:
    first = read_lora(world.path(world_lora(world, character=character)["path"]))
    second = read_lora(world.path(world_lora(world, kind="style", subject=style)["path"]))
    merged = merge(first, scaled(second, 1.0))
    # No metadata: nothing names the character or its trigger.
    path = write_lora(Lora(first.format, merged.modules, {}, "F32"), tmp_path / "pack.safetensors")
    return path, max(f.rank for f in first.modules.values())


def test_a_merge_splits_at_its_seam_and_each_part_is_put_back(engine, world, tmp_path):
    path, first_rank = _merged(world, tmp_path, "ultraman", "sepia")
    pipe = engine.renderer.pipe
    with engine.renderer.lora(load_file(str(path))) as adapter:
        groups = rank_blocks(pipe, adapter)
        assert sorted(map(tuple, groups)) == [tuple(range(first_rank)), tuple(range(first_rank, 2 * first_rank))]
        before = {name: p.detach().clone() for name, p in pipe.unet.named_parameters() if "lora_B" in name}
        with only(pipe, adapter, groups[0]):
            changed = [name for name, p in pipe.unet.named_parameters()
                       if "lora_B" in name and not torch.equal(p, before[name])]
            assert changed  # the other group's up columns are off
        assert all(torch.equal(p, before[name]) for name, p in pipe.unet.named_parameters() if name in before)


def test_a_style_merged_over_a_character_does_not_hide_it(engine, world, tmp_path, references):
    path, _ = _merged(world, tmp_path, "ultraman", "sepia")
    kwargs = dict(lora_format="kohya", family="fixture", modules=None, triggers=[], references=references)
    gains = engine.likelihood_gains(path, **kwargs)
    top = gains[0]
    assert top.character_id == "ultraman" and top.part.startswith("part ") and top.gain > 0.1, gains[:3]
    # The whole merge, as the probe measured it before: the style hid the character.
    with engine.renderer.lora(load_file(str(path))):
        whole = engine.likelihood.gains(references, [], engine.renderer.without_lora)
    assert next(g for g in whole if g.character_id == "ultraman").gain < 0, whole[:3]
    # Beside the part's gain, the whole's on all of Ultraman's references (the whole only screened him).
    ultraman = [r for r in references if r.character_id == "ultraman"]
    with engine.renderer.lora(load_file(str(path))):
        [full] = engine.likelihood.gains(ultraman, [], engine.renderer.without_lora)
    assert next(g for g in whole if g.character_id == "ultraman").screened
    assert top.whole_gain == full.gain and len(full.reference_gains) == len(ultraman[0].paths)


def test_a_lora_of_one_training_split_in_halves_shows_no_character(engine, world, references):
    lora = world_lora(world, kind="style", subject="sepia")
    gains = engine.likelihood_gains(world.path(lora["path"]), lora_format=lora["format"], family="fixture",
                                    modules=None, triggers=[], references=references)
    assert max(g.gain for g in gains) < 0.05, gains[:3]


def test_the_strongest_measurement_wins_and_a_full_one_beats_a_screened_one():
    whole = [CharacterGain("a", 0.01, "p", (0.01,)), CharacterGain("b", 0.3, "p", (0.3,), screened=True)]
    part = [CharacterGain("a", 0.2, "p", (0.2,), part="part 1 of 2"), CharacterGain("b", 0.1, "p", (0.1,))]
    best = strongest_of([whole, part])
    assert [(g.character_id, g.gain, g.part, g.screened) for g in best] == [("a", 0.2, "part 1 of 2", False),
                                                                           ("b", 0.1, "", False)]
    assert CharacterGain.from_dict(best[0].to_dict()) == best[0]
    assert np.isclose(strongest_of([whole])[0].gain, 0.3)
