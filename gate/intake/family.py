"""Infer which base model family a LoRA was trained for, from shapes, and compare with what its metadata claims."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gate.intake.layout import Layout

FAMILIES = ("sd15", "sd2", "sdxl", "sd3", "flux", "fixture")
# Width of the text states a UNet cross-attends to: the in-features of attn2's to_k/to_v.
CROSS_ATTENTION_WIDTH = {768: "sd15", 1024: "sd2", 2048: "sdxl", 64: "fixture"}
# Hidden width of the first text encoder, and the families that use such an encoder.
TEXT_ENCODER_WIDTH = {
    768: {"sd15", "sdxl", "sd3", "flux"}, 1024: {"sd2"}, 1280: {"sdxl", "sd3"}, 64: {"fixture"},
}
# Hidden width of a DiT's attention: Flux 3072; SD3 medium 1536, SD3.5 large 2432.
TRANSFORMER_WIDTH = {3072: "flux", 1536: "sd3", 2432: "sd3"}

# Prefixes of kohya's ss_base_model_version and of modelspec.architecture, and the family each names.
_CLAIMS = (
    ("sdxl", "sdxl"), ("sd_v1", "sd15"), ("sd_v2", "sd2"), ("sd3", "sd3"), ("flux", "flux"),
    ("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v1", "sd15"), ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-3", "sd3"), ("flux-1", "flux"), ("chroma", "flux"), ("lora_gate_fixture", "fixture"),
)


# A UNet attention's second-or-later transformer block, in diffusers or SGM (kohya SDXL) naming.
_DEEP_UNET_BLOCK = re.compile(r"(?:attentions_\d+|blocks_\d+_1|middle_block_1)_transformer_blocks_[1-9]")


@dataclass(frozen=True)
class FamilyReport:
    """The inferred family, the evidence for it, and how it compares with the metadata's claim."""

    family: str
    evidence: tuple[str, ...]
    claimed: str | None
    claimed_by: str | None

    @property
    def mismatch(self) -> bool:
        return self.claimed is not None and self.family != "unknown" and self.claimed != self.family


def _widths(layout: Layout, *fragments: str, component: str | None = None) -> set[int]:
    return {
        m.in_features for m in layout.find(*fragments)
        if m.in_features and (component is None or m.component == component)
    }


def _signals(layout: Layout) -> list[tuple[str, set[str]]]:
    """Each piece of evidence as (what was seen, the families it allows)."""
    signals: list[tuple[str, set[str]]] = []
    names = [m.name for m in layout.modules]
    if any(marker in n for n in names for marker in ("double_blocks", "single_blocks", "single_transformer")):
        signals.append(("Flux double/single blocks", {"flux"}))
    if any("joint_blocks" in n for n in names):
        signals.append(("SD3 joint blocks", {"sd3"}))
    for width in _widths(layout, "attn2_to_k") | _widths(layout, "attn2_to_v"):
        signals.append((f"cross-attention width {width}", {CROSS_ATTENTION_WIDTH.get(width, "unknown")}))
    for width in _widths(layout, "attn_to_q", component="transformer") | _widths(layout, "attn_to_k"):
        if width in TRANSFORMER_WIDTH:
            signals.append((f"transformer width {width}", {TRANSFORMER_WIDTH[width]}))
    # SD1.x/2.x UNets have one transformer block per attention; SDXL has 2 or 10.
    if any(_DEEP_UNET_BLOCK.search(n) for n in names):
        signals.append(("several transformer blocks per UNet attention", {"sdxl"}))
    for width in _widths(layout, "self_attn_q_proj", component="text_encoder"):
        signals.append((f"text encoder width {width}", TEXT_ENCODER_WIDTH.get(width, {"unknown"})))
    # A second or third text encoder: CLIP-G (SDXL, SD3) or T5 (SD3; Flux in kohya's naming).
    if "text_encoder_2" in layout.components:
        signals.append(("a second text encoder", {"sdxl", "sd3", "flux"}))
    if "text_encoder_3" in layout.components:
        signals.append(("a third text encoder", {"sd3", "flux"}))
    return signals


def claimed_family(metadata: dict[str, str]) -> tuple[str | None, str | None]:
    """The family the metadata claims, and the key that claims it; untrusted, only compared."""
    for key in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(key, "").strip().lower()
        for prefix, family in _CLAIMS:
            if value.startswith(prefix):
                return family, key
    if metadata.get("ss_v2", "").strip().lower() == "true":
        return "sd2", "ss_v2"
    if metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture"):
        return "unknown", "modelspec.architecture" if "modelspec.architecture" in metadata else "ss_base_model_version"
    return None, None


def infer_family(layout: Layout, metadata: dict[str, str]) -> FamilyReport:
    """Intersect what every shape signal allows; metadata only breaks a tie, never overrides shapes."""
    claimed, claimed_by = claimed_family(metadata)
    signals = _signals(layout)
    candidates = set(FAMILIES)
    for _, allowed in signals:
        candidates &= allowed
    if len(candidates) == 1:
        family = candidates.pop()
    elif claimed in candidates and signals:
        family = claimed
    else:
        family = "unknown"
    return FamilyReport(family, tuple(what for what, _ in signals), claimed, claimed_by)
