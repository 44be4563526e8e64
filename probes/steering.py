"""Steered probes: surface what a LoRA learned without knowing its trigger word.

A trigger-word LoRA changes the UNet's cross-attention along the directions of the text states its
trigger produces. Those directions are the top right-singular vectors of the LoRA's stacked key/value
updates (ΔW_k, ΔW_v of every attn2 layer). Adding one to a generic prompt's text states, in either sign,
plays the role of the unknown trigger: a stripped file still shows what it draws.
"""

from __future__ import annotations

import torch


def attention_updates(unet, adapter: str) -> list[torch.Tensor]:
    """ΔW = B·A·scale of every cross-attention key and value projection the adapter changes."""
    updates = []
    for name, module in unet.named_modules():
        if not name.endswith("attn2"):
            continue
        for projection in (getattr(module, "to_k", None), getattr(module, "to_v", None)):
            if projection is not None and adapter in getattr(projection, "lora_A", {}):
                a, b = projection.lora_A[adapter].weight, projection.lora_B[adapter].weight
                updates.append((b.float() @ a.float()) * projection.scaling[adapter])
    return updates


@torch.inference_mode()
def steering_directions(unet, adapter: str, count: int) -> torch.Tensor | None:
    """The `count` text-state directions the LoRA's cross-attention responds to most, unit length."""
    updates = attention_updates(unet, adapter)
    if not updates:
        return None
    _, _, right = torch.linalg.svd(torch.cat(updates), full_matrices=False)
    return right[:count]
