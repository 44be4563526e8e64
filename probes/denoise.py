"""Denoising errors of reference images under the resident pipeline, with and without a LoRA: the
likelihood probe's measurements (probes/likelihood.py says what they mean)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

import numpy as np
import torch
from PIL import Image, ImageOps

from probes.likelihood import CharacterGain, LikelihoodSpec, ReferenceSet
from probes.pixels import as_shown
from probes.probe_set import ProbeSetError
from probes.recovery import TriggerRecovery

# Reference latents kept on the device: every reference of a few hundred characters (an SD 1.5 latent is 32 KB
# in half precision), not all of a 10,000-character registry's.
LATENT_CACHE = 4096


class LikelihoodProbe:
    """Denoising errors of reference images under the renderer's resident pipeline (with or without a LoRA)."""

    def __init__(self, renderer, spec: LikelihoodSpec, size: tuple[int, int]):
        from diffusers import DDPMScheduler

        self.renderer, self.spec, self.size = renderer, spec, size  # size: the probe set's, (width, height)
        # Noised with the training schedule the model learnt from: a sampling scheduler's add_noise can depend
        # on its inference steps (DPM-Solver's falls back to its last sigma for a timestep not among them).
        self._noising = DDPMScheduler.from_config(renderer.pipe.scheduler.config)
        self._latents: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first
        self._base_errors: dict[tuple[str, str], float] = {}  # (prompt, reference path): the base never changes
        self.recovery = TriggerRecovery(self, spec.recovery) if spec.recovery and spec.recovery.characters else None

    @property
    def _pipe(self):
        return self.renderer.pipe

    def supported(self) -> bool:
        """SD-style pipelines: a VAE, a UNet that predicts noise, one CLIP text encoder."""
        pipe = self._pipe
        steps = self._noising.config.num_train_timesteps
        if max(self.spec.timesteps) >= steps:
            raise ProbeSetError(f"likelihood timesteps must be below the model's {steps} training timesteps")
        return (all(hasattr(pipe, name) for name in ("vae", "unet", "text_encoder", "tokenizer"))
                and getattr(pipe, "text_encoder_2", None) is None
                and self._noising.config.prediction_type == "epsilon")

    @torch.inference_mode()
    def _latent(self, path: str) -> torch.Tensor:
        if path in self._latents:
            self._latents.move_to_end(path)
        else:
            if len(self._latents) >= LATENT_CACHE:  # a large registry's references pass through, not pile up
                self._latents.popitem(last=False)
            with Image.open(path) as image:  # cropped to the probe set's aspect, then sized to it
                fitted = ImageOps.fit(as_shown(image), self.size, Image.Resampling.BICUBIC)
                pixels = np.asarray(fitted, np.float32)
            tensor = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None]
            vae = self._pipe.vae
            encoded = vae.encode(tensor.to(self.renderer.device, self.renderer.dtype)).latent_dist.mean
            self._latents[path] = (encoded * vae.config.scaling_factor)[0]
        return self._latents[path]

    def _errors(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Mean denoising error of each (prompt, reference path) over the spec's timesteps, in batches that mix
        prompts (a character's name prompt alone would make a small batch)."""
        batch = self.spec.batch
        return [e for i in range(0, len(pairs), batch) for e in self._batch_errors(pairs[i : i + batch])]

    @torch.inference_mode()
    def _batch_errors(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        pipe, device = self._pipe, self.renderer.device
        prompts = list(dict.fromkeys(prompt for prompt, _ in pairs))
        encoded = pipe.encode_prompt(prompts, device, 1, False)[0]
        states = encoded[[prompts.index(prompt) for prompt, _ in pairs]]
        latents = torch.stack([self._latent(path) for _, path in pairs])
        errors = np.zeros(len(pairs))
        for noisy, noise, timestep in self.noised(latents):
            predicted = pipe.unet(noisy, timestep, encoder_hidden_states=states).sample
            errors += ((predicted.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
        return errors / len(self.spec.timesteps)

    def noised(self, latents: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(noisy latents, noise, timesteps) at each of the spec's timesteps, in its order. The same noise for
        every reference and with or without the LoRA: a paired comparison (trigger recovery uses it too)."""
        generator = torch.Generator("cpu").manual_seed(self.spec.noise_seed)
        noised = []
        for step in self.spec.timesteps:
            noise = torch.randn(latents.shape[1:], generator=generator).to(latents.device, latents.dtype)
            noise = noise.expand_as(latents)
            timestep = torch.full((len(latents),), step, device=latents.device, dtype=torch.long)
            noised.append((self._noising.add_noise(latents, noise, timestep), noise, timestep))
        return noised

    def _prompts(self, triggers: Sequence[str], reference: ReferenceSet) -> list[str]:
        prompts = list(self.spec.prompts) + list(triggers[: self.spec.triggers]) + [reference.name]
        return list(dict.fromkeys(p for p in prompts if p.strip()))

    def lora_errors(self, references: Sequence[ReferenceSet], triggers: Sequence[str]) -> dict[tuple[str, str], float]:
        """As the pipeline stands (a LoRA applied or not): every (prompt, reference path) error, measured now."""
        return self._measure(references, triggers, {})

    def base_errors(self, references: Sequence[ReferenceSet], triggers: Sequence[str]) -> dict[tuple[str, str], float]:
        """Of the base model (call it with no LoRA on): each error measured once, then served from the cache."""
        return self._measure(references, triggers, self._base_errors)

    def _measure(self, references, triggers, store: dict) -> dict[tuple[str, str], float]:
        wanted = list(dict.fromkeys((prompt, path) for reference in references
                                    for prompt in self._prompts(triggers, reference)
                                    for path in reference.paths[: self.spec.references]))
        missing = [pair for pair in wanted if pair not in store]
        store.update(zip(missing, self._errors(missing), strict=True))
        return {pair: store[pair] for pair in wanted}

    def gains(self, references: Sequence[ReferenceSet], triggers: Sequence[str],
              base_model: Callable[[], AbstractContextManager]) -> list[CharacterGain]:
        """Call it with the LoRA applied; `base_model()` switches the LoRA off for a block (the base errors,
        cached). Per character, the best prompt's mean relative error cut; strongest first. With a shortlist, a
        registry larger than it is screened on each character's first references, and only the strongest and
        those the LoRA names are measured on all of theirs (the screen's errors reused); the rest keep their
        screened gains. A recovered trigger is searched apart (`recovered`)."""
        errors: dict[tuple[str, str], float] = {}
        if not self.screens(references):
            return self.measured(references, triggers, base_model, errors)
        screen = self.screened(references, triggers, base_model, errors)
        kept = {g.character_id for g in screen[: self.spec.shortlist]} | {r.character_id for r in references if r.named}
        full = self.measured([r for r in references if r.character_id in kept], triggers, base_model, errors)
        return _strongest(full + [g for g in screen if g.character_id not in kept])

    def screens(self, references: Sequence[ReferenceSet]) -> bool:
        """Whether a registry this large is screened before the shortlist is measured in full."""
        return 0 < self.spec.shortlist < len(references)

    def screened(self, references: Sequence[ReferenceSet], triggers: Sequence[str],
                 base_model: Callable[[], AbstractContextManager], errors: dict) -> list[CharacterGain]:
        """Every character on its first `screen_references`, marked screened, strongest first; the LoRA's errors
        go into `errors`, where a later full measurement of the same LoRA (as it stands then) reuses them."""
        first = [r.first(self.spec.screen_references) for r in references]
        return [replace(g, screened=True) for g in self.measured(first, triggers, base_model, errors)]

    def measured(self, references: Sequence[ReferenceSet], triggers: Sequence[str],
                 base_model: Callable[[], AbstractContextManager], errors: dict) -> list[CharacterGain]:
        """Each character on its references (up to the spec's `references`), strongest first; the LoRA's errors
        are read from and added to `errors`."""
        lora = self._measure(references, triggers, errors)
        with base_model():
            base = self.base_errors(references, triggers)
        return _strongest([self._gain(reference, triggers, lora, base) for reference in references
                           if reference.paths])

    def recovered(self, gains: list[CharacterGain], references: Sequence[ReferenceSet],
                  base_model: Callable[[], AbstractContextManager]) -> list[CharacterGain]:
        """For a LoRA that adapts the text encoder (one that can hide a trigger of its own): the strongest of
        `gains` measured in full, and those the LoRA names, measured again under a recovered trigger, with the
        LoRA as it stands now; a character keeps whichever gain is higher (screened ones are passed through)."""
        if self.recovery is None:
            return gains
        by_id = {r.character_id: r for r in references}
        full = sorted((g for g in gains if not g.screened), key=lambda g: -g.gain)
        searched = {g.character_id for g in full[: self.spec.recovery.characters]}
        searched |= {g.character_id for g in full if by_id[g.character_id].named}
        paths = {g.character_id: by_id[g.character_id].paths[: self.spec.references] for g in gains
                 if g.character_id in searched}  # in the gains' order: the batches do not depend on a set's
        paths = {cid: own for cid, own in paths.items() if len(own) >= 2}
        found = dict(zip(paths, self.recovery.gains(list(paths.values()), base_model), strict=True)) if paths else {}
        out = []
        for gain in gains:
            if gain.character_id in found:
                per_reference, nearest = found[gain.character_id]
                mean = round(float(np.mean(per_reference)), 5)
                if mean > gain.gain:
                    gain = replace(gain, gain=mean, prompt=nearest, reference_gains=per_reference, recovered=True)
            out.append(gain)
        return out

    def _gain(self, reference: ReferenceSet, triggers: Sequence[str], lora: dict, base: dict) -> CharacterGain:
        paths = reference.paths[: self.spec.references]
        best = None
        for prompt in self._prompts(triggers, reference):
            per_reference = tuple(round((base[(prompt, p)] - lora[(prompt, p)]) / max(base[(prompt, p)], 1e-8), 5)
                                  for p in paths)
            mean = float(np.mean(per_reference))
            if best is None or mean > best.gain:
                best = CharacterGain(reference.character_id, round(mean, 5), prompt, per_reference)
        return best


def _strongest(gains: list[CharacterGain]) -> list[CharacterGain]:
    return sorted(gains, key=lambda g: -g.gain)
