"""Tensor names as diffusers' LoRA loader expects them, for the peft layouts it does not map itself.

Intake accepts, and this maps: peft's raw `state_dict()` names that keep the adapter's name
("<module>.lora_A.default.weight"), and `save_pretrained`'s "base_model.model.<module>" prefix, which does
not say which component the adapter was trained on (read off the module path, as intake does); and a peft-named
module's alpha, folded into its up factor.
"""

from __future__ import annotations

import math

import torch

from gate.intake.layout import NAMED_ADAPTER_RE, component_of
from probes.contract import UnsupportedLora

_PEFT_PREFIX = "base_model.model."


def diffusers_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with peft's adapter names and "base_model.model." prefixes mapped; others unchanged."""
    renamed: dict[str, torch.Tensor] = {}
    adapters: set[str] = set()
    for name, tensor in state_dict.items():
        named = NAMED_ADAPTER_RE.match(name)
        if named:
            adapters.add(named["adapter"])
            suffix = "" if named["role"] == "lora_magnitude_vector" and not name.endswith(".weight") else ".weight"
            name = f"{named['module']}.{named['role']}{suffix}"
        if name.startswith(_PEFT_PREFIX):
            path = name[len(_PEFT_PREFIX):]
            name = f"{component_of(path)}.{path}"
        if name in renamed:
            raise UnsupportedLora(f"two tensors map to {name!r}: the file holds more than one adapter")
        renamed[name] = tensor
    if len(adapters) > 1:
        raise UnsupportedLora(f"the file holds more than one adapter ({', '.join(sorted(adapters))}); "
                              "one LoRA per upload")
    return _alphas_folded(renamed)


def _alphas_folded(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A peft-named module's `<module>.alpha` folded into its up factor (lora_B · alpha/rank), as kohya's alpha
    means: diffusers reads alphas only from kohya names, and refuses a peft-named file that holds any. Merge and
    conversion tools write such files; the scale they carry is the LoRA's strength."""
    folded = dict(state_dict)
    for name, alpha in state_dict.items():
        module = name.removesuffix(".alpha")
        down, up = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        if module == name or down not in state_dict or up not in state_dict:
            continue
        value = float(alpha.reshape(-1)[0]) if alpha.numel() == 1 else math.nan
        if not math.isfinite(value):
            raise UnsupportedLora(f"{name} is not one finite number; an alpha is the LoRA's scale")
        folded[up] = state_dict[up] * (value / state_dict[down].shape[0])
        del folded[name]
    return folded
