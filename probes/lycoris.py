"""LyCORIS LoHa, LoKr and full-weight modules as plain LoRA factors, so that diffusers can apply them.

diffusers applies LoRA (and LoCon) but not LyCORIS's Hadamard (LoHa) or Kronecker (LoKr) products, nor its full
weight differences. Left unprobed, such a file went to a person whatever it drew, and an infringer could convert a
character LoRA to LoKr to escape an automatic block. Each module's weight change is rebuilt as LyCORIS and the
web UIs that load it define it (a1111's network_hada / network_lokr: scale alpha / rank where a factor is low-rank,
else 1; Tucker cores included), then factorised again by SVD into kohya's lora_down / lora_up with alpha = rank,
keeping the fewest components whose discarded energy is under ENERGY_LEFT: the change applied is the file's to
within 0.1% (Frobenius), and `Conversion.error` says how close.

Not converted (UnsupportedLora): weight-decomposed modules (`dora_scale`), bias changes (`diff_b`), OFT and GLoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gate.intake.layout import KOHYA_PREFIXES
from probes.contract import UnsupportedLora

ENERGY_LEFT = 1e-6  # the share of a change's squared norm the SVD may drop: a relative error of 0.1%
ROLES = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a",
         "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "diff"}
REFUSED = {"dora_scale": "weight-decomposed (DoRA) LyCORIS modules", "diff_b": "LyCORIS bias changes (diff_b)"}


@dataclass(frozen=True)
class Conversion:
    state_dict: dict[str, torch.Tensor]
    modules: int  # LyCORIS modules rewritten as LoRA factors (0: the file had none)
    error: float  # the largest relative Frobenius error of a rewritten module


def as_lora(state_dict: dict[str, torch.Tensor], pipe=None) -> Conversion:
    """`state_dict` with each LyCORIS module rewritten as LoRA factors; every other tensor unchanged. `pipe` gives
    the target layers' shapes, which a conv module's flattened factors do not carry."""
    lycoris = {name.rpartition(".")[0] for name in state_dict if name.rpartition(".")[2] in ROLES}
    if not lycoris:
        return Conversion(state_dict, 0, 0.0)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    kept: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        module, _, role = name.rpartition(".")
        if module in lycoris and role != "alpha":  # a LoRA module's dora_scale beside them stays as it is
            modules.setdefault(module, {})[role] = tensor
        else:
            kept[name] = tensor
    shapes = _layer_shapes(pipe) if pipe is not None else {}
    # An SD 1.x conv module's change is 1280 x 11520: seconds of SVD on a CPU, milliseconds on the pipeline's GPU.
    device = getattr(pipe, "device", None) or torch.device("cpu")
    worst = 0.0
    for module, roles in modules.items():
        unknown = roles.keys() - ROLES
        if unknown:
            raise UnsupportedLora(f"{module}: {REFUSED.get(min(unknown), f'a LyCORIS {min(unknown)!r} tensor')} "
                                  "cannot be applied")
        alpha = kept.pop(f"{module}.alpha", None)
        delta, rank = _delta(module, {role: tensor.to(device) for role, tensor in roles.items()})
        if alpha is not None and rank:
            value = float(alpha.reshape(-1)[0]) if alpha.numel() == 1 else math.nan
            if not math.isfinite(value):
                raise UnsupportedLora(f"{module}.alpha is not one finite number; an alpha is the module's scale")
            delta = delta * (value / rank)
        down, up, error = _factors(delta, shapes.get(module))
        kept.update({f"{module}.lora_down.weight": down, f"{module}.lora_up.weight": up,
                     f"{module}.alpha": torch.tensor(float(down.shape[0]))})
        worst = max(worst, error)
    return Conversion(kept, len(modules), worst)


def _delta(module: str, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int | None]:
    """The module's weight change as a matrix [out, in * kernel], and the rank its alpha divides by (None: the
    change is used as it stands)."""
    w = {role: tensor.float() for role, tensor in w.items()}
    try:
        if "diff" in w:
            return _flat(w["diff"]), None
        if "hada_w1_a" in w:
            first = _product(w["hada_w1_a"], w["hada_w1_b"], w.get("hada_t1"))
            second = _product(w["hada_w2_a"], w["hada_w2_b"], w.get("hada_t2"))
            if first.shape != second.shape:
                raise UnsupportedLora(f"{module}: its two Hadamard factors differ in shape")
            return first * second, w["hada_w1_b"].shape[0]
        first = w["lokr_w1"] if "lokr_w1" in w else _product(w["lokr_w1_a"], w["lokr_w1_b"], None)
        second = w["lokr_w2"] if "lokr_w2" in w else _product(w["lokr_w2_a"], w["lokr_w2_b"], w.get("lokr_t2"))
        rank = (w["lokr_w2_b"].shape[0] if "lokr_w2_b" in w else w["lokr_w1_b"].shape[0] if "lokr_w1_b" in w
                else None)
        return torch.kron(_flat(first), _flat(second)), rank
    except KeyError as missing:
        raise UnsupportedLora(f"{module}: LyCORIS factor {missing.args[0]} is missing") from None
    except RuntimeError as exc:  # shapes that do not multiply
        raise UnsupportedLora(f"{module}: LyCORIS factors do not fit together ({exc})"[:300]) from None


def _product(up: torch.Tensor, down: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
    """up · down, or with a Tucker core [rank, rank, kh, kw] between them (up and down then [rank, out], [rank, in])."""
    if core is None:
        return up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
    return _flat(torch.einsum("i j k l, j r, i p -> p r k l", core, down, up))


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)


def _factors(delta: torch.Tensor, shape: torch.Size | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """lora_down, lora_up (conv-shaped where the layer is a conv) and the relative error of dropping the rest."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    energy = s.square()
    total = float(energy.sum())
    if total == 0.0:
        rank = 1
    else:
        left = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])  # energy from component k to the end
        rank = max(1, int((left > ENERGY_LEFT * total).sum()))
    root = s[:rank].sqrt()
    up, down = u[:, :rank] * root, root[:, None] * vh[:rank]
    error = math.sqrt(float(energy[rank:].sum()) / total) if total else 0.0
    if shape is not None and len(shape) == 4:
        if math.prod(shape) != delta.numel():
            raise UnsupportedLora(f"a LyCORIS module's change has {delta.numel()} values; its layer {tuple(shape)}")
        return down.reshape(rank, *shape[1:]).contiguous(), up.reshape(shape[0], rank, 1, 1).contiguous(), error
    return down.contiguous(), up.contiguous(), error


def _layer_shapes(pipe) -> dict[str, torch.Size]:
    """kohya's name for every weighted layer of the pipeline (the module path with '_' for '.'), to its shape."""
    shapes = {}
    for prefix, component in KOHYA_PREFIXES.items():  # the names intake reads a LyCORIS file's modules by
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for path, layer in model.named_modules():
            weight = getattr(layer, "weight", None)
            if isinstance(weight, torch.Tensor) and path:
                shapes[prefix + path.replace(".", "_")] = weight.shape
    return shapes
