"""The renderer: a base pipeline loaded once and kept resident; LoRAs swapped in and out per job.

A LoRA is loaded from a state dict that intake already validated (never from a path, so diffusers can
never fall back to pickle loading), under a unique adapter name, rendered, and deleted: the pipeline
returns bit-exactly to the base. Adapters are never fused in the swap loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from probes.bundle import BundledEmbeddings, split_bundle
from probes.contract import UnsupportedLora
from probes.keys import diffusers_names
from probes.lycoris import as_lora
from probes.probe_set import Probe, ProbeSet

log = logging.getLogger(__name__)

# Layouts that neither diffusers' LoRA loaders nor probes/lycoris.py can apply (LoHa, LoKr and full weight changes
# are rewritten as LoRA factors there).
UNSUPPORTED_FORMATS = {"oft": "OFT", "glora": "LyCORIS GLoRA"}


TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
COMPONENTS = ("unet", "transformer", *TEXT_ENCODERS)  # where a LoRA's layers can sit in a pipeline


def adapted_modules(pipe, name: str, components: Sequence[str] = COMPONENTS) -> Iterator[torch.nn.Module]:
    """The modules of the pipeline's `components` that adapter `name` changes."""
    for component in components:
        model = getattr(pipe, component, None)
        if model is not None:
            yield from (module for module in model.modules() if name in getattr(module, "lora_A", {}))


def model_digest(model_dir: Path) -> str:
    """Identifies a model directory by its configs and weight file sizes (cheap even for multi-GB weights)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.suffix == ".json":
            digest.update(path.read_bytes())
        elif path.suffix == ".safetensors":
            digest.update(f"{path.relative_to(model_dir)}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def pick_device(requested: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA in float16 where present, else CPU in float32."""
    if requested:
        device = torch.device(requested)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.float16 if device.type == "cuda" else torch.float32


class Renderer:
    """One resident base pipeline, with its base renders cached per probe."""

    def __init__(self, model_dir: str | Path, device: str | None = None, cache_dir: str | Path | None = None):
        from diffusers import DiffusionPipeline

        self.device, self.dtype = pick_device(device)
        self.model_dir = Path(model_dir)
        self.pipe = DiffusionPipeline.from_pretrained(
            self.model_dir, local_files_only=True, dtype=self.dtype
        ).to(self.device)
        if getattr(self.pipe, "safety_checker", None) is not None:
            self.pipe.safety_checker = None  # the gate must see what the LoRA draws, unblurred
        self.pipe.set_progress_bar_config(disable=True)
        self._base_cache: dict[tuple[str, str], np.ndarray] = {}
        self._embeddings: BundledEmbeddings | None = None  # a bundle applied with the current LoRA
        self._scheduler_for: str | None = None
        # Base renders also persist on disk, per base model and device, so a new process need not redo them.
        self.model_id = f"{self.model_dir.name}@{model_digest(self.model_dir)}-{self.device.type}"
        self.cache_dir = Path(cache_dir) / self.model_id if cache_dir else None

    def _use_scheduler(self, probe_set: ProbeSet) -> None:
        if self._scheduler_for != probe_set.id:
            import diffusers

            scheduler_class = getattr(diffusers, probe_set.scheduler, None)
            if scheduler_class is None:
                raise ValueError(f"probe set {probe_set.id} names unknown scheduler {probe_set.scheduler!r}")
            self.pipe.scheduler = scheduler_class.from_config(self.pipe.scheduler.config)
            self._scheduler_for = probe_set.id

    @property
    def can_steer(self) -> bool:
        """Steering edits the text states; done for pipelines with one CLIP text encoder (SD 1.x/2.x)."""
        return hasattr(self.pipe, "encode_prompt") and getattr(self.pipe, "text_encoder_2", None) is None

    def _text(self, batch: Sequence[Probe], probe_set: ProbeSet, directions: torch.Tensor | None) -> dict:
        """Prompt arguments for the pipeline: plain prompts, or text states with a direction added."""
        negative = [probe_set.negative_prompt] * len(batch)
        if directions is None or all(p.direction is None for p in batch):
            return {"prompt": [p.prompt for p in batch], "negative_prompt": negative}
        states, negative_states = self.pipe.encode_prompt([p.prompt for p in batch], self.device, 1, True, negative)
        for row, probe in enumerate(batch):
            if probe.direction is not None:
                scale = states[row, 1:].norm(dim=-1).mean()  # the prompt's own size: strength is relative
                direction = directions[probe.direction].to(states.device, states.dtype)
                states[row, 1:] += probe.strength * scale * direction
        return {"prompt_embeds": states, "negative_prompt_embeds": negative_states}

    @torch.inference_mode()
    def render(self, probes: Sequence[Probe], probe_set: ProbeSet,
               directions: torch.Tensor | None = None) -> np.ndarray:
        """Render probes in batches; returns uint8 images (n, height, width, 3). Seeds are per probe."""
        self._use_scheduler(probe_set)
        images = []
        for start in range(0, len(probes), probe_set.batch_size):
            batch = probes[start : start + probe_set.batch_size]
            generators = [torch.Generator(self.device).manual_seed(p.seed) for p in batch]
            output = self.pipe(
                **self._text(batch, probe_set, directions),
                num_inference_steps=probe_set.steps,
                guidance_scale=probe_set.guidance,
                width=probe_set.width,
                height=probe_set.height,
                generator=generators,
                output_type="np",
            )
            images.append((np.clip(output.images, 0, 1) * 255).round().astype(np.uint8))
        return np.concatenate(images) if images else np.zeros((0, probe_set.height, probe_set.width, 3), np.uint8)

    def render_base(self, probes: Sequence[Probe], probe_set: ProbeSet) -> np.ndarray:
        """Base renders, computed once per (probe set, probe) and then served from the cache."""
        missing = [p for p in probes if not self._cached(probe_set, p)]
        if missing:
            for probe, image in zip(missing, self.render(missing, probe_set), strict=True):
                self._base_cache[(probe_set.id, probe.key)] = image
                if self.cache_dir:
                    path = self.cache_dir / probe_set.id / f"{probe.key}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    # Written aside and renamed: workers sharing the cache never read half a file.
                    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.png")
                    Image.fromarray(image).save(partial)
                    os.replace(partial, path)
        return np.stack([self._base_cache[(probe_set.id, p.key)] for p in probes])

    def _cached(self, probe_set: ProbeSet, probe: Probe) -> bool:
        if (probe_set.id, probe.key) in self._base_cache:
            return True
        path = self.cache_dir / probe_set.id / f"{probe.key}.png" if self.cache_dir else None
        if path and path.exists():
            with Image.open(path) as image:
                self._base_cache[(probe_set.id, probe.key)] = np.asarray(image.convert("RGB"))
            return True
        return False

    @contextlib.contextmanager
    def lora(self, state_dict: dict[str, torch.Tensor], expected_modules: int | None = None) -> Iterator[str]:
        """Apply a LoRA for the duration of the block; always removed afterwards, even on error."""
        name = f"upload_{uuid.uuid4().hex[:12]}"
        state_dict, bundle = split_bundle(state_dict)
        embeddings = BundledEmbeddings(self.pipe, bundle)  # these raise UnsupportedLora before anything is loaded
        converted = as_lora(state_dict, self.pipe)
        if converted.modules:
            log.info("%d LyCORIS modules applied as LoRA factors (largest relative error %.1e)", converted.modules,
                     converted.error)
        state_dict = diffusers_names(converted.state_dict)
        try:
            self.pipe.load_lora_weights(state_dict, adapter_name=name)
        except Exception as exc:  # diffusers raises many kinds for layouts it cannot map
            self._remove(name)
            raise UnsupportedLora(f"diffusers cannot apply this LoRA to the base model: {exc}"[:500]) from None
        try:
            applied = self._count_layers(name)
            if applied == 0:
                raise UnsupportedLora("no module of this LoRA matches a layer of the base model")
            if expected_modules and applied < expected_modules:
                log.warning("adapter %s applied to %d of %d modules", name, applied, expected_modules)
            self.pipe.set_adapters([name], adapter_weights=[1.0])
            embeddings.apply()
            self._embeddings = embeddings
            yield name
        finally:
            try:
                embeddings.lift()
                self._embeddings = None
            finally:
                self._remove(name)

    @contextlib.contextmanager
    def without_lora(self) -> Iterator[None]:
        """The base model for the block, the applied LoRA switched off, not removed: peft's disabled layers
        run their base layer alone, so outputs are the base's bit for bit (tests/probes/test_likelihood.py)."""
        self.pipe.disable_lora()
        embeddings = self._embeddings
        if embeddings:  # the bundled tokens go too: the base reads the trigger as the words it knows
            embeddings.lift()
        try:
            yield
        finally:
            try:
                if embeddings:
                    embeddings.apply()
            finally:
                self.pipe.enable_lora()

    @contextlib.contextmanager
    def at_strength(self, name: str, strength: float) -> Iterator[None]:
        """The applied adapter at another weight for the block (every component it adapts), then back at 1."""
        self.pipe.set_adapters([name], adapter_weights=[strength])
        try:
            yield
        finally:
            self.pipe.set_adapters([name], adapter_weights=[1.0])

    def adapts_text_encoder(self, name: str) -> bool:
        """Whether the applied adapter changes a text encoder: a LoRA that can carry a trigger of its own."""
        return any(adapted_modules(self.pipe, name, TEXT_ENCODERS))

    def _count_layers(self, name: str) -> int:
        return sum(1 for _ in adapted_modules(self.pipe, name))

    def _remove(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.pipe.delete_adapters(name)
        if self._count_layers(name):  # belt and braces: a half-loaded adapter must not leak into the base
            self.pipe.unload_lora_weights()
