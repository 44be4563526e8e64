"""The probe engine: the GPU side's whole job for one LoRA. Render the probe set with and without the LoRA
(base renders cached), embed both, and hand back images and vectors. It never opens the gate's record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from probes.blocks import only, rank_blocks
from probes.contract import ProbeOutcome, UnsupportedLora, embedder_id
from probes.denoise import LikelihoodProbe
from probes.embed import ImageEmbedder
from probes.likelihood import CharacterGain, ReferenceSet, strongest_of
from probes.probe_set import Probe, ProbeSet
from probes.quiet import quiet_libraries
from probes.render import UNSUPPORTED_FORMATS, Renderer
from probes.steering import steering_directions

Progress = Callable[[str], None]
# From the LoRA's render vectors and the base's (same probes): the reference sets to measure, and a note of the
# scope (registry version, its size, the shortlist) for the evidence.
Candidates = Callable[[np.ndarray, np.ndarray], tuple[list[ReferenceSet], dict]]


class EmbeddingEngine:
    """The embedder and probe set without the diffusion pipeline: what the gate's matching side needs
    (embedding reference images) on a machine that does not render."""

    def __init__(self, embedder_dir: str | Path, probe_set: ProbeSet, device: str | None = None):
        quiet_libraries()
        self.probe_set = probe_set
        self.embedder = ImageEmbedder(embedder_dir, device or None)
        self.embedder_id = embedder_id(embedder_dir)

    def embed(self, images) -> np.ndarray:
        return self.embedder.embed(images)

    def probe(self, *args, **kwargs):
        raise RuntimeError("this engine does not render; probing runs on a probe worker")


class ProbeEngine:
    """A resident base pipeline and embedder for one probe set."""

    def __init__(self, base_dir: str | Path, embedder_dir: str | Path, probe_set: ProbeSet, device: str | None = None,
                 cache_dir: str | Path | None = None):
        quiet_libraries()
        self.probe_set = probe_set
        self.renderer = Renderer(base_dir, device or None, cache_dir)
        self.embedder = ImageEmbedder(embedder_dir, device or None)
        self.embedder_id = embedder_id(embedder_dir)
        self._base_vectors: dict[str, np.ndarray] = {}
        self.likelihood = (LikelihoodProbe(self.renderer, probe_set.likelihood, (probe_set.width, probe_set.height))
                           if probe_set.likelihood else None)
        if self.likelihood and not self.likelihood.supported():
            self.likelihood = None

    def embed(self, images) -> np.ndarray:
        return self.embedder.embed(images)

    def check_supported(self, lora_format: str, family: str) -> None:
        if lora_format in UNSUPPORTED_FORMATS:
            raise UnsupportedLora(f"{UNSUPPORTED_FORMATS[lora_format]} adapters cannot be rendered by diffusers")
        if family not in (self.probe_set.family, "unknown"):
            raise UnsupportedLora(
                f"the LoRA is for {family}; this engine renders {self.probe_set.family} ({self.probe_set.id})"
            )

    def base(self, probes: list[Probe]) -> tuple[np.ndarray, np.ndarray]:
        """Base renders and their embeddings, each computed once per probe."""
        images = self.renderer.render_base(probes, self.probe_set)
        missing = [i for i, p in enumerate(probes) if p.key not in self._base_vectors]
        if missing:
            for i, vector in zip(missing, self.embed(images[missing]), strict=True):
                self._base_vectors[probes[i].key] = vector
        return images, np.stack([self._base_vectors[p.key] for p in probes])

    def _readable(self, references: list[ReferenceSet]) -> list[ReferenceSet]:
        """The references this worker can open, when its probe set measures likelihood at all."""
        if self.likelihood is None:
            return []
        return [r for r in (r.readable() for r in references) if r.paths]

    def likelihood_gains(self, lora_path: str | Path, *, lora_format: str, family: str, modules: int | None,
                         triggers: list[str], references: list[ReferenceSet]) -> list[CharacterGain]:
        """The likelihood probe alone, no rendering: how much likelier the LoRA makes each character's
        `references` (what back-catalogue screening for a new character needs); raises UnsupportedLora."""
        self.check_supported(lora_format, family)
        readable = self._readable(references)
        if not readable:
            return []
        with self.renderer.lora(load_file(str(lora_path)), modules) as adapter:  # validated, never unpickled
            return self._gains(adapter, readable, triggers)

    def _gains(self, adapter: str, references: list[ReferenceSet], triggers: list[str]) -> list[CharacterGain]:
        """The likelihood probe on the applied LoRA: the whole; where the probe set asks, its variants (the whole at
        other strengths, each group of its rank components alone: a merge's parts, probes/blocks.py); and where it
        adapts the text encoder, a recovered trigger as published and under the variant that showed most. Per
        character, the strongest."""
        spec, base_model = self.likelihood.spec, self.renderer.without_lora
        measured = [self.likelihood.gains(references, triggers, base_model)]
        variants = [(partial(self.renderer.at_strength, adapter, strength), {"strength": strength})
                    for strength in spec.strengths]
        groups = rank_blocks(self.renderer.pipe, adapter) if spec.blocks else []
        variants += [(partial(only, self.renderer.pipe, adapter, components),
                      {"part": f"part {number} of {len(groups)}: rank components {_spans(components)}"})
                     for number, components in enumerate(groups, 1)]
        variant_gains, variants_strongest = self._variant_gains(variants, references, triggers)
        measured += variant_gains
        # A character the whole screened (on its first references) but a variant measured in full, or screened
        # among its strongest, is measured in full as a whole too: the whole's gain beside it is what the whole's
        # thresholds and the residual rule read, and a screened one rests on fewer references than their
        # calibration (the residual rule's fit is only as steady as the gains it is fitted to). Before the trigger
        # search, so that the whole's gain beside a variant's can be a recovered one.
        if len(measured) > 1:
            full = {g.character_id for g in strongest_of(measured) if not g.screened} | variants_strongest
            again = {g.character_id for g in measured[0] if g.screened and g.character_id in full}
            if again:  # measured, not screened again (more of them than the shortlist would be)
                measured[0] = [g for g in measured[0] if g.character_id not in again] + self.likelihood.measured(
                    [r for r in references if r.character_id in again], triggers, base_model, {})
        if self.renderer.adapts_text_encoder(adapter):
            # The trigger is searched as published and under the variant that showed most: a copy published at
            # another weight hides it at 1, and a merge's style hides it in the whole (its part alone, the text
            # encoder whole, is the character's LoRA). A LoRA that draws only under its trigger moves nothing
            # under a prompt, so which variant shows most is noise; the whole is where it was trained to draw.
            shown = [max((g.gain for g in gains if not g.screened), default=float("-inf")) for gains in measured]
            best = shown.index(max(shown))
            contexts = [partial(self.renderer.at_strength, adapter, 1.0), *(enter for enter, _ in variants)]
            for index in dict.fromkeys((0, best)):
                with contexts[index]():
                    measured[index] = self.likelihood.recovered(measured[index], references, base_model)
        return strongest_of(measured)

    def _variant_gains(self, variants: list[tuple[Callable, dict]], references: list[ReferenceSet],
                       triggers: list[str]) -> tuple[list[list[CharacterGain]], set[str]]:
        """Each variant's gains (`variants`: a context that makes it, and the fields that label its gains), and
        the characters any variant screened among its strongest. A registry the probe screens is screened under
        every variant, and one shortlist is drawn over them all: the characters with the strongest screened gains
        under any variant, and those the LoRA names, each measured in full under the variant that screened it
        strongest. Only the strongest gain of all is read, so a shortlist per variant would measure in full what
        can only lose to another variant (the whole, measured apart, keeps a shortlist of its own)."""
        probe, base_model = self.likelihood, self.renderer.without_lora
        if not probe.screens(references):
            measurements = []
            for enter, fields in variants:
                with enter():
                    measurements.append(_labelled(probe.measured(references, triggers, base_model, {}), fields))
            return measurements, set()
        errors: list[dict] = [{} for _ in variants]
        screens = []
        for (enter, _), kept in zip(variants, errors, strict=True):
            with enter():
                screens.append(probe.screened(references, triggers, base_model, kept))
        strongest_in: dict[str, tuple[float, int]] = {}  # character: its strongest screened gain, under which variant
        for index, screen in enumerate(screens):
            for gain in screen:
                if gain.character_id not in strongest_in or gain.gain > strongest_in[gain.character_id][0]:
                    strongest_in[gain.character_id] = (gain.gain, index)
        count = probe.spec.shortlist
        shortlisted = set(sorted(strongest_in, key=lambda cid: -strongest_in[cid][0])[:count])
        shortlisted |= {r.character_id for r in references if r.named}
        measurements = []
        for index, ((enter, fields), screen) in enumerate(zip(variants, screens, strict=True)):
            chosen = [r for r in references
                      if r.character_id in shortlisted and strongest_in[r.character_id][1] == index]
            full = []
            if chosen:
                with enter():
                    full = probe.measured(chosen, triggers, base_model, errors[index])
            done = {g.character_id for g in full}
            measurements.append(_labelled(full + [g for g in screen if g.character_id not in done], fields))
        return measurements, {g.character_id for screen in screens for g in screen[:count]}

    def probe(self, lora_path: str | Path, *, lora_format: str, family: str, modules: int | None,
              terms: dict[str, list[str]], progress: Progress | None = None,
              references: list[ReferenceSet] | None = None, candidates: Candidates | None = None) -> ProbeOutcome:
        """Render and embed the probe set with and without the LoRA, and, where the probe set asks for it,
        measure how much likelier it makes each character's `references`, or those `candidates` picks from the
        renders' vectors (a large registry's shortlist); raises UnsupportedLora."""
        progress = progress or (lambda stage: None)
        self.check_supported(lora_format, family)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        state_dict = load_file(str(lora_path))  # safetensors only: validated by intake, never unpickled
        probes = self.probe_set.probes(terms)
        steered, directions = [], None
        with self.renderer.lora(state_dict, modules) as adapter:
            if self.probe_set.steering and self.renderer.can_steer:
                directions = steering_directions(self.renderer.pipe.unet, adapter, self.probe_set.steering.directions)
                steered = self.probe_set.steered_probes(0 if directions is None else len(directions))
            progress(f"rendering {len(probes) + len(steered)} probes with the LoRA")
            lora_images = self.renderer.render(probes + steered, self.probe_set, directions)
            timings["render_lora"] = time.perf_counter() - started
            progress("embedding renders")
            mark = time.perf_counter()
            lora_vectors = self.embed(lora_images)
            timings["embed"] = time.perf_counter() - mark
            progress(f"rendering {len(probes)} base probes (cached after the first time)")
            mark = time.perf_counter()
            with self.renderer.without_lora():  # the LoRA switched off: the true base, bit for bit
                base_images, base_vectors = self.base(probes)
            timings["render_base"] = time.perf_counter() - mark
            scope: dict = {}
            if candidates is not None and self.likelihood is not None:
                mark = time.perf_counter()
                references, scope = candidates(lora_vectors[: len(probes)], base_vectors)
                timings["shortlist"] = time.perf_counter() - mark
            readable = self._readable(references or [])
            gains = []
            if readable:
                progress(f"measuring {len(readable)} characters' references with and without the LoRA")
                mark = time.perf_counter()
                gains = self._gains(adapter, readable, terms.get("trigger", []))
                timings["likelihood"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if steered:  # the base with the same steered text states: what the direction alone draws
            steered_base = self.renderer.render(steered, self.probe_set, directions)
            base_images = np.concatenate([base_images, steered_base])
            base_vectors = np.concatenate([base_vectors, self.embed(steered_base)])
        timings["render_base"] += time.perf_counter() - mark
        probes = probes + steered
        scope["measured"] = [gain.character_id for gain in gains if not gain.screened]
        if self.likelihood is not None:  # what else was measured: the calibration fits thresholds for each
            scope.update(strengths=list(self.likelihood.spec.strengths), blocks=self.likelihood.spec.blocks)
        return ProbeOutcome(self.probe_set.id, probes, lora_images, base_images, lora_vectors, base_vectors, timings,
                            gains, scope)


def _labelled(gains: list[CharacterGain], fields: dict) -> list[CharacterGain]:
    return [replace(g, **fields) for g in gains]


def _spans(components) -> str:
    """Component indices as 1-based runs: "1-8", "1-7, 9"."""
    runs: list[list[int]] = []
    for index in (int(i) + 1 for i in components):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
