"""The likelihood probe: does the LoRA make the base model better at drawing a character's references?

A diffusion model's denoising error on an image measures how likely it finds that image. A LoRA that
teaches a character cuts the error on that character's reference images, under a generic prompt or its
trigger, far more than on anyone else's; a style or concept LoRA does not (it moves the model away from
flat reference drawings). The same noise and timesteps are used with and without the LoRA, so the
comparison is paired, and no render or embedder stands between the LoRA and the evidence.

Per reference image and prompt: gain = (base error - LoRA error) / base error, averaged over the probe
set's timesteps. Per character: the mean gain over its references under its best prompt (the generic
prompts, the LoRA's trigger phrases, the character's own name).

The cost grows with the registry, so a large one is screened first: every character on its first few
references, then only the strongest `shortlist` in full, with any character the LoRA's metadata names. A
screened gain rests on fewer references than the
calibration's and is kept apart (`CharacterGain.screened`): evidence, not grounds for a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class LikelihoodSpec:
    """The probe set's [likelihood] table."""

    prompts: tuple[str, ...]  # generic conditioning prompts
    timesteps: tuple[int, ...]  # noise levels at which the denoising error is measured
    noise_seed: int
    triggers: int  # up to this many of the LoRA's trigger phrases are prompts too
    references: int  # at most this many references per character (the first ones registered)
    batch: int = 32  # reference images per UNet call
    shortlist: int = 0  # characters measured on all their references after the screen; 0: every one
    screen_references: int = 2  # references per character in the screen (the first ones; reused in full)
    index_shortlist: int = 0  # a registry snapshot is cut to this many characters by the renders first; 0: none


@dataclass(frozen=True)
class ReferenceSet:
    """A character's reference images, as the gate sends them: ids and paths out, gains back."""

    character_id: str
    name: str
    paths: tuple[str, ...]
    named: bool = False  # the LoRA's metadata or hub page names it: measured in full whatever the screen says

    @classmethod
    def from_dict(cls, data: dict) -> ReferenceSet:
        return cls(str(data["character_id"]), str(data["name"]), tuple(str(p) for p in data["paths"]),
                   bool(data.get("named", False)))

    def first(self, count: int) -> ReferenceSet:
        return replace(self, paths=self.paths[:count])

    def readable(self) -> ReferenceSet:
        """Only the paths this worker can open (a worker on another machine may see none)."""
        return replace(self, paths=tuple(p for p in self.paths if Path(p).is_file()))


@dataclass(frozen=True)
class CharacterGain:
    character_id: str
    gain: float  # mean over the character's references, under the best prompt
    prompt: str
    reference_gains: tuple[float, ...]  # per reference, under that prompt
    screened: bool = False  # measured in the screen only, on fewer references: not left on the shortlist

    def to_dict(self) -> dict:
        return {"character_id": self.character_id, "gain": self.gain, "prompt": self.prompt,
                "reference_gains": list(self.reference_gains), "screened": self.screened}

    @classmethod
    def from_dict(cls, data: dict) -> CharacterGain:
        return cls(str(data["character_id"]), float(data["gain"]), str(data["prompt"]),
                   tuple(float(g) for g in data.get("reference_gains", ())), bool(data.get("screened", False)))
