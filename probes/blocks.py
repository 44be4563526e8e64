"""A merged LoRA's parts: its rank components grouped by where they act, each probed alone.

A "character + style" merge (kohya's merge, ranks concatenated) keeps the character's weight change whole and
adds a style's on top; the style cuts the base model's likelihood of every reference drawing, the character's
too, so the merge's gain hides the character (benchmarks.merges). Its rank components still come from two
trainings: each component's size in every module it touches (|up column| x |down row|) follows the training
it came from, so two groups of components with unlike profiles across the modules are the merge's sources
(tried by hand on the fixture world: 8 character + style merges split at their seam, one component astray in
1; tests/probes/test_blocks.py checks one). Each group is switched on alone, the others' up columns zeroed in
place and put back after, and measured by the likelihood probe like a LoRA of its own.

A LoRA that is not a merge splits too, into two arbitrary halves, each a weaker copy of the whole; the
calibration's clean LoRAs are split the same way, so a half of a clean LoRA is judged by what clean LoRAs do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from probes.render import adapted_modules


def _factors(pipe, adapter: str) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(up weight, down weight) of every module the adapter changes, in every component."""
    return [(module.lora_B[adapter].weight, module.lora_A[adapter].weight)
            for module in adapted_modules(pipe, adapter)]


def rank_blocks(pipe, adapter: str) -> list[np.ndarray]:
    """The two groups of the widest modules' rank components (index arrays), or [] when there is nothing to
    split: fewer than 2 components, or one group empty."""
    factors = _factors(pipe, adapter)
    if not factors:
        return []
    rank = max(down.shape[0] for _, down in factors)
    widest = [(up, down) for up, down in factors if down.shape[0] == rank]
    if rank < 2:
        return []
    with torch.no_grad():
        sizes = [up.float().reshape(up.shape[0], rank, -1).norm(dim=(0, 2)) *
                 down.float().reshape(rank, -1).norm(dim=1) for up, down in widest]
    profile = np.log(torch.stack(sizes, dim=1).cpu().numpy() + 1e-12)  # components x modules
    labels = _two_means(profile)
    groups = [np.flatnonzero(labels == k) for k in (0, 1)]
    return groups if all(len(g) for g in groups) else []


def _two_means(points: np.ndarray, rounds: int = 20) -> np.ndarray:
    """2-means from the two points farthest apart (deterministic: no random start)."""
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    first, second = np.unravel_index(distances.argmax(), distances.shape)
    centres = points[[first, second]]
    labels = np.zeros(len(points), dtype=int)
    for _ in range(rounds):
        labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        if (labels == labels[0]).all():
            break
        centres = np.stack([points[labels == k].mean(0) for k in (0, 1)])
    return labels


@contextlib.contextmanager
def only(pipe, adapter: str, components: np.ndarray) -> Iterator[None]:
    """The adapter with only `components` of its widest modules on (the other up columns zeroed); narrower
    modules (the text encoder's, in a merge of a text-encoder LoRA with a UNet-only one) stay whole. Put back
    bit for bit after."""
    factors = _factors(pipe, adapter)
    rank = max(down.shape[0] for _, down in factors)
    off = torch.ones(rank, dtype=torch.bool)
    off[torch.as_tensor(components, dtype=torch.long)] = False
    saved = []
    with torch.no_grad():
        for up, down in factors:
            if down.shape[0] == rank:
                saved.append((up, up.detach().clone()))
                up[:, off.to(up.device)] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for up, original in saved:
                up.copy_(original)
