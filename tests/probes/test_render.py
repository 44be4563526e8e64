"""The renderer with the fixture world's real base model: deterministic, adapters swap in and out
bit-exactly, every module of both file formats applies, and what cannot be applied is 'unsupported'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

from gate.intake import inspect_file
from probes.contract import UnsupportedLora
from probes.probe_set import Probe
from tests.conftest import world_lora


@pytest.fixture(scope="module")
def two_probes(engine):
    return engine.probe_set.probes()[:2]


def test_base_renders_are_deterministic(engine, two_probes):
    first = engine.renderer.render(two_probes, engine.probe_set)
    again = engine.renderer.render(two_probes, engine.probe_set)
    assert first.shape == (2, engine.probe_set.height, engine.probe_set.width, 3)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_adapter_applies_fully_then_leaves_the_base_bit_exact(engine, world, two_probes, fmt):
    lora = world_lora(world, format=fmt, kind="character", trigger=None)
    path = world.path(lora["path"])
    inspection = inspect_file(path)
    before = engine.renderer.render(two_probes, engine.probe_set)
    with engine.renderer.lora(load_file(path)) as name:
        assert engine.renderer._count_layers(name) == len(inspection.layout.modules)
        during = engine.renderer.render(two_probes, engine.probe_set)
    after = engine.renderer.render(two_probes, engine.probe_set)
    assert not np.array_equal(before, during)
    assert np.array_equal(before, after)
    assert not engine.renderer.pipe.get_list_adapters() or not any(engine.renderer.pipe.get_list_adapters().values())


def test_oft_glora_and_other_families_are_unsupported(engine, corpus_dir):
    # LoHa, LoKr and full are rewritten as LoRA factors (tests/probes/test_lycoris.py); these are SD 1.5 files
    for name in ("sd15_lokr", "sd15_oft_kohya", "sd15_lycoris_full", "sd15_glora", "sdxl_kohya", "flux_xlabs"):
        inspection = inspect_file(corpus_dir / f"{name}.safetensors")
        with pytest.raises(UnsupportedLora):
            engine.check_supported(inspection.layout.format, inspection.family.family)


def test_a_lora_whose_modules_match_nothing_is_unsupported(engine, world, tmp_path, two_probes):
    lora = world_lora(world, format="kohya")
    tensors = {key.replace("lora_unet_", "lora_unet_missing_"): value.numpy()
               for key, value in load_file(world.path(lora["path"])).items()}
    path = tmp_path / "renamed.safetensors"
    save_file(tensors, path)
    before = engine.renderer.render(two_probes, engine.probe_set)
    with pytest.raises(UnsupportedLora), engine.renderer.lora(load_file(path)):
        pass
    assert np.array_equal(before, engine.renderer.render(two_probes, engine.probe_set))


def _peft_layouts(state: dict) -> dict[str, dict]:
    """The same weights as peft writes them outside diffusers: raw state_dict() names, save_pretrained's prefix."""
    unet_only = {key: value for key, value in state.items() if key.startswith("unet.")}
    return {
        "adapter_named": {key.replace(".lora_A.weight", ".lora_A.default.weight")
                          .replace(".lora_B.weight", ".lora_B.default.weight"): value for key, value in state.items()},
        "save_pretrained": {key.replace("unet.", "base_model.model.", 1): value for key, value in unet_only.items()},
        "unet_only": unet_only,
        # alpha = 4·rank beside each module, its up factor / 4: the same ΔW, as merge and conversion tools write it
        "with_alphas": {**{key: value / 4 if key.endswith(".lora_B.weight") else value for key, value in state.items()},
                        **{key.replace(".lora_A.weight", ".alpha"): torch.tensor(4.0 * value.shape[0])
                           for key, value in state.items() if key.endswith(".lora_A.weight")}},
    }


def test_peft_layouts_from_outside_diffusers_render_like_the_diffusers_one(engine, world, two_probes, tmp_path):
    lora = world_lora(world, format="peft", kind="character", trigger="plmbrm")
    state = load_file(world.path(lora["path"]))
    layouts = _peft_layouts(state)
    renders = {}
    for layout, tensors in [("diffusers", state), *layouts.items()]:
        path = tmp_path / f"{layout}.safetensors"
        save_file({key: value.numpy() for key, value in tensors.items()}, path)
        inspection = inspect_file(path)  # intake takes every layout as the same LoRA
        assert inspection.layout.format == "diffusers" and inspection.family.family == "fixture", layout
        with engine.renderer.lora(load_file(path)) as name:
            assert engine.renderer._count_layers(name) == len(inspection.layout.modules), layout
            renders[layout] = engine.renderer.render(two_probes, engine.probe_set)
    assert np.array_equal(renders["adapter_named"], renders["diffusers"])
    assert np.array_equal(renders["with_alphas"], renders["diffusers"])  # the alphas folded in, not dropped
    assert np.array_equal(renders["save_pretrained"], renders["unet_only"])
    assert not np.array_equal(renders["unet_only"], engine.renderer.render(two_probes, engine.probe_set))


@pytest.mark.parametrize("alpha", [torch.tensor(float("nan")), torch.tensor([1.0, 2.0])])
def test_an_alpha_that_is_not_one_finite_number_is_unsupported(engine, world, alpha):
    state = load_file(world.path(world_lora(world, format="peft")["path"]))
    down = next(key for key in state if key.endswith(".lora_A.weight"))
    with pytest.raises(UnsupportedLora, match="not one finite number"), \
            engine.renderer.lora({**state, down.replace(".lora_A.weight", ".alpha"): alpha}):
        pass


def test_two_named_adapters_in_one_file_are_unsupported(engine, world):
    state = load_file(world.path(world_lora(world, format="peft")["path"]))
    two = {key.replace(".lora_A.weight", f".lora_A.{name}.weight").replace(".lora_B.weight", f".lora_B.{name}.weight"):
           value for name in ("first", "second") for key, value in state.items()}
    with pytest.raises(UnsupportedLora, match="more than one adapter"), engine.renderer.lora(two):
        pass


def test_steered_probes_use_the_loras_own_directions(engine, world):
    from probes.steering import steering_directions

    lora = world_lora(world, kind="character", metadata_style="stripped", format="kohya")
    with engine.renderer.lora(load_file(world.path(lora["path"]))) as adapter:
        directions = steering_directions(engine.renderer.pipe.unet, adapter, 2)
    assert directions.shape == (2, engine.renderer.pipe.text_encoder.config.hidden_size)
    assert np.allclose(directions.norm(dim=1).numpy(), 1.0, atol=1e-4)
    probe = engine.probe_set.probes()[0]
    steered = [Probe(probe.prompt, probe.seed, "steered", 0, 1.0), Probe(probe.prompt, probe.seed, "steered", 0, -1.0)]
    images = engine.renderer.render(steered[:2], engine.probe_set, directions)
    plain = engine.renderer.render([type(p)(p.prompt, p.seed, "generic") for p in steered[:2]], engine.probe_set)
    assert not np.array_equal(images, plain)  # the direction changes what the base draws too
