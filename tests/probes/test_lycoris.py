"""LyCORIS LoHa, LoKr and full modules rewritten as LoRA factors (probes/lycoris.py): the change applied is the
file's, checked against the formulas computed independently here (numpy) and on the real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gate.intake import inspect_file
from probes.contract import UnsupportedLora
from probes.lycoris import as_lora
from tests.conftest import world_lora

RNG = np.random.default_rng(7)
LINEAR = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # a 3x3 conv, 32 -> 32, in the fixture's UNet


def _t(*shape) -> torch.Tensor:
    return torch.from_numpy(RNG.standard_normal(shape).astype(np.float32))


def _applied(converted: dict, module: str) -> np.ndarray:
    """The change kohya's formula applies for the rewritten module: up · down · alpha / rank, as a matrix."""
    down, up = converted[f"{module}.lora_down.weight"], converted[f"{module}.lora_up.weight"]
    alpha = float(converted[f"{module}.alpha"])
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).numpy() * alpha / down.shape[0]


def _close(applied: np.ndarray, expected: np.ndarray) -> None:
    assert applied.shape == expected.shape
    assert np.linalg.norm(applied - expected) <= 1e-3 * np.linalg.norm(expected)


def test_loha_is_the_hadamard_product_of_its_pairs_scaled_by_alpha_over_rank():
    w = {"hada_w1_a": _t(64, 4), "hada_w1_b": _t(4, 48), "hada_w2_a": _t(64, 4), "hada_w2_b": _t(4, 48)}
    state = {f"{LINEAR}.{role}": value for role, value in w.items()} | {f"{LINEAR}.alpha": torch.tensor(2.0)}
    converted = as_lora(state)
    expected = (w["hada_w1_a"].numpy() @ w["hada_w1_b"].numpy()) * (w["hada_w2_a"].numpy() @ w["hada_w2_b"].numpy())
    _close(_applied(converted.state_dict, LINEAR), expected * 2.0 / 4)
    assert converted.modules == 1 and converted.error < 1e-3
    assert not any("hada_" in key for key in converted.state_dict)


def test_lokr_is_the_kronecker_product_and_ignores_alpha_when_no_factor_is_low_rank():
    w1, w2a, w2b = _t(4, 2), _t(16, 3), _t(3, 24)
    low_rank = as_lora({f"{LINEAR}.lokr_w1": w1, f"{LINEAR}.lokr_w2_a": w2a, f"{LINEAR}.lokr_w2_b": w2b,
                        f"{LINEAR}.alpha": torch.tensor(6.0)})
    _close(_applied(low_rank.state_dict, LINEAR), np.kron(w1.numpy(), w2a.numpy() @ w2b.numpy()) * 6.0 / 3)
    w2 = _t(16, 24)
    full = as_lora({f"{LINEAR}.lokr_w1": w1, f"{LINEAR}.lokr_w2": w2, f"{LINEAR}.alpha": torch.tensor(6.0)})
    _close(_applied(full.state_dict, LINEAR), np.kron(w1.numpy(), w2.numpy()))


def test_conv_modules_take_the_layers_shape_from_the_pipeline(engine):
    w = {"hada_w1_a": _t(32, 4), "hada_w1_b": _t(4, 32 * 9), "hada_w2_a": _t(32, 4), "hada_w2_b": _t(4, 32 * 9)}
    converted = as_lora({f"{CONV}.{role}": value for role, value in w.items()}, engine.renderer.pipe).state_dict
    down, up = converted[f"{CONV}.lora_down.weight"], converted[f"{CONV}.lora_up.weight"]
    assert down.shape[1:] == (32, 3, 3) and up.shape[1:] == (down.shape[0], 1, 1)
    expected = (w["hada_w1_a"].numpy() @ w["hada_w1_b"].numpy()) * (w["hada_w2_a"].numpy() @ w["hada_w2_b"].numpy())
    _close(_applied(converted, CONV), expected)


def test_tucker_cores_and_kronecker_of_a_conv_kernel():
    t1, wa, wb = _t(3, 3, 3, 3), _t(3, 32), _t(3, 16)
    core = as_lora({f"{CONV}.hada_t1": t1, f"{CONV}.hada_w1_a": wa, f"{CONV}.hada_w1_b": wb,
                    f"{CONV}.hada_t2": t1, f"{CONV}.hada_w2_a": wa, f"{CONV}.hada_w2_b": wb}).state_dict
    # ΔW[p, r, k, l] = Σ_ij t[i, j, k, l] · wb[j, r] · wa[i, p], squared (both pairs alike here)
    one = np.tensordot(np.tensordot(t1.numpy(), wb.numpy(), axes=([1], [0])), wa.numpy(), axes=([0], [0]))
    one = one.transpose(3, 2, 0, 1).reshape(32, -1)
    _close(_applied(core, CONV), one * one)
    w1, w2 = _t(2, 2), _t(16, 16, 3, 3)
    kron = as_lora({f"{CONV}.lokr_w1": w1, f"{CONV}.lokr_w2": w2}).state_dict
    expected = np.kron(w1.numpy()[:, :, None, None], w2.numpy()).reshape(32, -1)
    _close(_applied(kron, CONV), expected)


def test_a_lora_file_passes_through_and_keeps_its_dora_scale():
    state = {f"{LINEAR}.lora_down.weight": _t(4, 48), f"{LINEAR}.lora_up.weight": _t(64, 4),
             f"{LINEAR}.alpha": torch.tensor(4.0), f"{LINEAR}.dora_scale": _t(64, 1)}
    converted = as_lora(state)
    assert converted.modules == 0 and converted.state_dict is state


@pytest.mark.parametrize(("extra", "message"), [
    ({"dora_scale": _t(64, 1)}, "DoRA"),
    ({"diff_b": _t(64)}, "bias"),
    ({"alpha": torch.tensor(float("nan"))}, "alpha"),
    ({"hada_w1_b": _t(5, 48)}, "fit together"),
    ({"hada_w2_b": _t(4, 40)}, "differ in shape"),
])
def test_what_cannot_be_rewritten_is_unsupported(extra, message):
    w = {"hada_w1_a": _t(64, 4), "hada_w1_b": _t(4, 48), "hada_w2_a": _t(64, 4), "hada_w2_b": _t(4, 48)} | extra
    with pytest.raises(UnsupportedLora, match=message):
        as_lora({f"{LINEAR}.{role}": value for role, value in w.items()})
    with pytest.raises(UnsupportedLora, match="missing"):
        as_lora({f"{LINEAR}.hada_w1_a": _t(64, 4), f"{LINEAR}.hada_w1_b": _t(4, 48)})


def _kohya_as(state: dict, kind: str) -> dict:
    """A kohya LoRA's every module rewritten exactly in LyCORIS form: LoHa with a second pair of ones, LoKr with a
    1x1 first factor; the weight change is the LoRA's to the last bit of arithmetic."""
    out = {}
    for name, down in state.items():
        if not name.endswith(".lora_down.weight"):
            continue
        module = name.removesuffix(".lora_down.weight")
        up, alpha = state[f"{module}.lora_up.weight"], state[f"{module}.alpha"]
        if kind == "loha":
            out |= {f"{module}.hada_w1_a": up, f"{module}.hada_w1_b": down,
                    f"{module}.hada_w2_a": torch.ones(up.shape[0], down.shape[0]) / down.shape[0],
                    f"{module}.hada_w2_b": torch.ones(down.shape[0], down.shape[1])}
        else:
            out |= {f"{module}.lokr_w1": torch.ones(1, 1), f"{module}.lokr_w2_a": up, f"{module}.lokr_w2_b": down}
        out[f"{module}.alpha"] = alpha
    return out


def _rewritten(world, tmp_path, kind: str):
    lora = world_lora(world, format="kohya", kind="character", trigger=None)
    path = world.path(lora["path"])
    rewritten = tmp_path / f"{kind}.safetensors"
    with safe_open(path, "pt") as original_file:  # the same metadata: the same probes (its name, its triggers)
        metadata = original_file.metadata()
    save_file(_kohya_as(load_file(path), kind), rewritten, metadata)
    inspection = inspect_file(rewritten)
    assert inspection.ok and inspection.layout.format == kind
    return lora, path, rewritten, inspection


def test_loha_and_lokr_rewrites_render_as_the_lora(engine, world, tmp_path):
    probes = engine.probe_set.probes()[:2]
    lora, path, _, _ = _rewritten(world, tmp_path, "loha")
    with engine.renderer.lora(load_file(path)):
        expected = engine.renderer.render(probes, engine.probe_set).astype(int)
    for kind in ("loha", "lokr"):
        _, _, rewritten, inspection = _rewritten(world, tmp_path, kind)
        with engine.renderer.lora(load_file(rewritten)) as name:
            assert engine.renderer._count_layers(name) == len(inspection.layout.modules)
            renders = engine.renderer.render(probes, engine.probe_set).astype(int)
        assert np.abs(renders - expected).max() <= 8, kind  # float rounding through 20 denoising steps


def test_a_character_lora_rewritten_as_lokr_is_blocked_as_the_lora(scanner, world, tmp_path):
    lora, path, rewritten, _ = _rewritten(world, tmp_path, "lokr")
    original, lycoris = scanner.scan(path), scanner.scan(rewritten)
    assert lycoris.verdict == original.verdict == "block"
    assert "not_probed" not in [r.kind for r in lycoris.decision.reasons]
    # The whole LoRA's gains are the LoRA's. (The parts are not: the SVD orders rank components otherwise, so the
    # shortlist measured in full can differ; compare what both measured alike.)
    gains = {g.character_id: (g.of_whole, g.screened) for g in original.outcome.likelihood}
    again = {g.character_id: (g.of_whole, g.screened) for g in lycoris.outcome.likelihood}
    alike = [c for c in gains if gains[c][1] == again[c][1]]
    assert lora["character"] in alike and len(alike) >= len(gains) // 2
    assert max(abs(again[c][0] - gains[c][0]) for c in alike) < 0.005
