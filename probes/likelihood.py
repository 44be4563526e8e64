"""The likelihood probe: does the LoRA make the base model better at drawing a character's references?

A diffusion model's denoising error on an image measures how likely it finds that image. A LoRA that
teaches a character cuts the error on that character's reference images, under a generic prompt or its
trigger, far more than on anyone else's; a style or concept LoRA does not (it moves the model away from
flat reference drawings). The same noise and timesteps are used with and without the LoRA, so the
comparison is paired, and no render or embedder stands between the LoRA and the evidence.

Per reference image and prompt: gain = (base error - LoRA error) / base error, averaged over the probe
set's timesteps. Per character: the mean gain over its references under its best prompt (the generic
prompts, the LoRA's trigger phrases, the character's own name), or under a recovered trigger where that is
better (probes/recovery.py: a soft prompt fitted to half the references, scored on the other half).

A LoRA is measured as published and, where the probe set lists other `strengths`, applied at those too: an
infringer can publish the weights scaled down (or up) and tell users which weight to load it at, and a LoRA's
gain peaks near the strength it was trained at (at twice that, clean and character LoRAs alike make every
reference far less likely). A gain at another strength, like a merge's part's, is judged by the variants'
thresholds, fitted on the clean LoRAs' variants (a weaker copy of a clean LoRA can gain a little where the LoRA
did not).

The cost grows with the registry, so a large one is screened first: every character on its first few
references, then only the strongest `shortlist` in full, with any character the LoRA's metadata names. A
screened gain rests on fewer references than the
calibration's and is kept apart (`CharacterGain.screened`): evidence, not grounds for a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class RecoverySpec:
    """The probe set's [likelihood.recovery] table: a trigger nobody declared, searched as a soft prompt
    (probes/recovery.py) for the characters measured in full."""

    characters: int = 3  # the strongest this many by their prompt gains (and any the LoRA names); 0: off
    tokens: int = 4  # soft tokens where a trigger stands
    steps: int = 10
    learning_rate: float = 0.1


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
    recovery: RecoverySpec | None = None  # None: prompts only
    blocks: bool = False  # also measure the LoRA's two groups of rank components alone (probes/blocks.py)
    # Also measure the whole LoRA applied at these strengths (adapter weights): one published weaker or stronger
    # than it was trained, for its users to load at another weight, shows its character there. () : only at 1.
    strengths: tuple[float, ...] = ()


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
    recovered: bool = False  # measured under a recovered trigger (a soft prompt); `prompt` names its nearest pieces
    part: str = ""  # measured on one group of the LoRA's rank components alone (a merge's part); "": the whole
    whole_gain: float | None = None  # where more was measured: the whole LoRA's gain at strength 1
    strength: float = 1.0  # the adapter weight it was measured at (the probe set's `strengths`)

    @property
    def variant(self) -> bool:
        """Measured on a variant of the LoRA (one part alone, or the whole at another strength), not as published:
        judged by the variants' thresholds."""
        return bool(self.part) or self.strength != 1.0

    @property
    def of_whole(self) -> float:
        """The whole LoRA's gain on this character as published, at strength 1 (what the residual rule's
        sensitivities were fitted on)."""
        if self.variant and self.whole_gain is not None:
            return self.whole_gain
        return self.gain

    def to_dict(self) -> dict:
        return {"character_id": self.character_id, "gain": self.gain, "prompt": self.prompt,
                "reference_gains": list(self.reference_gains), "screened": self.screened,
                "recovered": self.recovered, "part": self.part, "whole_gain": self.whole_gain,
                "strength": self.strength}

    @classmethod
    def from_dict(cls, data: dict) -> CharacterGain:
        return cls(str(data["character_id"]), float(data["gain"]), str(data["prompt"]),
                   tuple(float(g) for g in data.get("reference_gains", ())), bool(data.get("screened", False)),
                   bool(data.get("recovered", False)), str(data.get("part") or ""),
                   None if data.get("whole_gain") is None else float(data["whole_gain"]),
                   float(data.get("strength", 1.0)))


def strongest_of(measurements: list[list[CharacterGain]]) -> list[CharacterGain]:
    """Per character, the highest gain any measurement (the whole LoRA at strength 1 first, then at other
    strengths and each of its parts) found, preferring one measured on all references to a screened one;
    strongest first."""
    whole = {gain.character_id: gain for gain in measurements[0]} if measurements else {}
    best: dict[str, CharacterGain] = {}
    for gains in measurements:
        for gain in gains:
            held = best.get(gain.character_id)
            if held is None or (held.screened, -held.gain) > (gain.screened, -gain.gain):
                best[gain.character_id] = gain
    # Where more was measured, every gain keeps the whole's beside it: a part's and the whole's are judged by
    # thresholds of their own, the residual rule reads the whole as published, and the record shows what was
    # looked at.
    if len(measurements) > 1:
        best = {cid: replace(g, whole_gain=whole[cid].gain) if cid in whole else g for cid, g in best.items()}
    return sorted(best.values(), key=lambda g: -g.gain)
