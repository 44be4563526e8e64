"""Denoising errors of reference images under the resident pipeline, with and without a LoRA: the
likelihood probe's measurements (probes/likelihood.py says what they mean)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from probes.likelihood import CharacterGain, LikelihoodSpec, ReferenceSet
from probes.probe_set import ProbeSetError


class LikelihoodProbe:
    """Denoising errors of reference images under the renderer's resident pipeline (with or without a LoRA)."""

    def __init__(self, renderer, spec: LikelihoodSpec, size: tuple[int, int]):
        from diffusers import DDPMScheduler

        self.renderer, self.spec, self.size = renderer, spec, size  # size: the probe set's, (width, height)
        # Noised with the training schedule the model learnt from: a sampling scheduler's add_noise can depend
        # on its inference steps (DPM-Solver's falls back to its last sigma for a timestep not among them).
        self._noising = DDPMScheduler.from_config(renderer.pipe.scheduler.config)
        self._latents: dict[str, torch.Tensor] = {}
        self._base_errors: dict[tuple[str, str], float] = {}  # (prompt, reference path): the base never changes

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
        if path not in self._latents:
            with Image.open(path) as image:  # cropped to the probe set's aspect, then sized to it
                fitted = ImageOps.fit(image.convert("RGB"), self.size, Image.Resampling.BICUBIC)
                pixels = np.asarray(fitted, np.float32)
            tensor = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None]
            vae = self._pipe.vae
            encoded = vae.encode(tensor.to(self.renderer.device, self.renderer.dtype)).latent_dist.mean
            self._latents[path] = (encoded * vae.config.scaling_factor)[0]
        return self._latents[path]

    def _errors(self, prompt: str, paths: Sequence[str]) -> np.ndarray:
        """Mean denoising error of each reference under `prompt`, over the spec's timesteps, in batches."""
        batch = self.spec.batch
        return np.concatenate([self._batch_errors(prompt, paths[i : i + batch]) for i in range(0, len(paths), batch)])

    @torch.inference_mode()
    def _batch_errors(self, prompt: str, paths: Sequence[str]) -> np.ndarray:
        pipe, device = self._pipe, self.renderer.device
        states = pipe.encode_prompt(prompt, device, 1, False)[0]
        latents = torch.stack([self._latent(p) for p in paths])
        generator = torch.Generator("cpu").manual_seed(self.spec.noise_seed)
        errors = np.zeros(len(paths))
        for step in self.spec.timesteps:
            # The same noise for every reference and with or without the LoRA: a paired comparison.
            noise = torch.randn(latents.shape[1:], generator=generator).to(device, latents.dtype)
            noise = noise.expand_as(latents)
            timestep = torch.full((len(paths),), step, device=device, dtype=torch.long)
            noisy = self._noising.add_noise(latents, noise, timestep)
            predicted = pipe.unet(noisy, timestep, encoder_hidden_states=states.expand(len(paths), -1, -1)).sample
            errors += ((predicted.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
        return errors / len(self.spec.timesteps)

    def _prompts(self, triggers: Sequence[str], reference: ReferenceSet) -> list[str]:
        prompts = list(self.spec.prompts) + list(triggers[: self.spec.triggers]) + [reference.name]
        return list(dict.fromkeys(p for p in prompts if p.strip()))

    def lora_errors(self, references: Sequence[ReferenceSet], triggers: Sequence[str]) -> dict[tuple[str, str], float]:
        """With the LoRA applied: every (prompt, reference path) error the gains need, measured now."""
        return self._measure(references, triggers, {})

    def base_errors(self, references: Sequence[ReferenceSet], triggers: Sequence[str]) -> dict[tuple[str, str], float]:
        """Without it: the same errors, each measured once and then served from the cache."""
        return self._measure(references, triggers, self._base_errors)

    def _measure(self, references, triggers, store: dict) -> dict[tuple[str, str], float]:
        wanted: dict[str, dict[str, None]] = {}  # prompt -> reference paths, in order, once each
        for reference in references:
            for prompt in self._prompts(triggers, reference):
                wanted.setdefault(prompt, {}).update(dict.fromkeys(reference.paths[: self.spec.references]))
        for prompt, paths in wanted.items():
            missing = [p for p in paths if (prompt, p) not in store]
            if missing:
                errors = self._errors(prompt, missing)
                store.update({(prompt, p): float(e) for p, e in zip(missing, errors, strict=True)})
        return {(prompt, p): store[(prompt, p)] for prompt, paths in wanted.items() for p in paths}

    def gains(self, references: Sequence[ReferenceSet], triggers: Sequence[str],
              lora: dict[tuple[str, str], float]) -> list[CharacterGain]:
        """Per character, the best prompt's mean relative error cut against the base; strongest first. Call it
        with no adapter applied: the base errors it lacks are measured now."""
        base = self.base_errors(references, triggers)
        results = []
        for reference in references:
            paths = reference.paths[: self.spec.references]
            if not paths:
                continue
            best = None
            for prompt in self._prompts(triggers, reference):
                per_reference = tuple(round((base[(prompt, p)] - lora[(prompt, p)]) / max(base[(prompt, p)], 1e-8), 5)
                                      for p in paths)
                mean = float(np.mean(per_reference))
                if best is None or mean > best.gain:
                    best = CharacterGain(reference.character_id, round(mean, 5), prompt, per_reference)
            results.append(best)
        return sorted(results, key=lambda g: -g.gain)
