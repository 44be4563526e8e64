"""Throughput benchmark: the gate's probe design against the naive way, measured in the same run.

Gate design: one resident base pipeline, each LoRA swapped in as an adapter and deleted after, base
renders cached per probe, prompts batched. Naive: a fresh pipeline per LoRA, the LoRA loaded into it,
base and LoRA renders made again for every LoRA, one prompt at a time. Both render the same probes with
the same seeds and embed their renders.

Two gate rows: a cold engine (timed from loading the pipeline; the first LoRA pays for the probe set's
shared base renders) and a worker already running (pipeline loaded, its cache holding the shared probes'
base renders, generic and registry prompts, as after its first job; base renders of each LoRA's own
trigger, tag and name prompts are still made per LoRA, inside the timing).

Where the probe set has a likelihood probe, a second pair of rows does the same with it on both sides: the
naive way measures every registered character's references one image per UNet call, base errors again for
every LoRA; the gate batches them, caches the base errors and screens the registry down to its shortlist.

    python -m benchmarks.probe_throughput [--loras 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from safetensors.torch import load_file

from gate.config import load_settings
from gate.detection.scanner import probe_terms
from gate.intake import inspect_file
from gate.registry.world import World
from probes.denoise import LikelihoodProbe
from probes.embed import ImageEmbedder
from probes.engine import ProbeEngine
from probes.likelihood import ReferenceSet
from probes.probe_set import load_probe_set
from probes.render import Renderer


def _probes(probe_set, path, registry_names):
    metadata = inspect_file(path).metadata
    terms = probe_terms(metadata, [])
    terms["registry"] = registry_names
    return probe_set.probes(terms), terms["trigger"]


SHARED_SOURCES = ("generic", "registry")  # probes every LoRA of a probe set gets


def gate_design(settings, probe_set, jobs, device, warm: bool = False,
                references: list[ReferenceSet] | None = None) -> tuple[float, int]:
    """With `references`, each LoRA is also measured by the likelihood probe, as a scan does."""
    started = time.perf_counter()  # a cold engine pays for loading the pipeline, as the naive way does
    engine = ProbeEngine(settings.base_model, settings.embedder, probe_set, device)
    likelihood = engine.likelihood if references else None
    if warm:  # a running worker has loaded it and rendered the shared probes on the base already
        shared = {p.key: p for _, probes, _ in jobs for p in probes if p.source in SHARED_SOURCES}
        engine.base(list(shared.values()))
        if likelihood:  # ... and measured the references on the base under the shared prompts
            likelihood.base_errors(references, [])
        started = time.perf_counter()
    images = 0
    for path, probes, triggers in jobs:
        engine.base(probes)
        with engine.renderer.lora(load_file(path)):
            rendered = engine.renderer.render(probes, probe_set)
            if likelihood:
                likelihood.gains(references, triggers, engine.renderer.without_lora)
        engine.embed(rendered)
        images += len(rendered)
    return time.perf_counter() - started, images


def naive(settings, probe_set, jobs, device, references: list[ReferenceSet] | None = None) -> tuple[float, int]:
    """With `references`, the likelihood probe the naive way too: every character in full (no screen), one
    reference image per UNet call, base errors measured again for every LoRA."""
    started = time.perf_counter()
    embedder = ImageEmbedder(settings.embedder, device)
    single = replace(probe_set, batch_size=1)
    one_by_one = replace(probe_set.likelihood, batch=1, shortlist=0) if references else None
    images = 0
    for path, probes, triggers in jobs:
        renderer = Renderer(settings.base_model, device)  # a fresh pipeline for every LoRA
        base = renderer.render(probes, single)
        renderer.pipe.load_lora_weights(load_file(path), adapter_name="lora")
        rendered = renderer.render(probes, single)
        if one_by_one:
            LikelihoodProbe(renderer, one_by_one, (probe_set.width, probe_set.height)).gains(
                references, triggers, renderer.without_lora)
        embedder.embed(list(base) + list(rendered))
        images += len(rendered)
        del renderer
    return time.perf_counter() - started, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    settings = load_settings()
    world = World.load(settings.world_dir)
    probe_set = load_probe_set(settings.probe_set)
    names = [c["name"] for c in world.characters(registered=True)]
    chosen = [lora for lora in world.loras("character", "style") if lora["format"] in ("kohya", "peft")][: args.loras]
    jobs = [(world.path(lora["path"]), *_probes(probe_set, world.path(lora["path"]), names)) for lora in chosen]
    references = [ReferenceSet(c["id"], c["name"], tuple(str(world.path(p)) for p in c["references"]))
                  for c in world.characters(registered=True)]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    rows = {"naive (fresh pipeline, no cache, batch 1)": naive(settings, probe_set, jobs, device),
            "gate, cold (resident, adapter swap, cached base, batched)": gate_design(settings, probe_set, jobs,
                                                                                     device),
            "gate, running worker (shared base renders cached)": gate_design(settings, probe_set, jobs, device,
                                                                             warm=True)}
    with_likelihood = {}
    if probe_set.likelihood:  # the same two ways with the likelihood probe: its own baseline and ratio
        with_likelihood = {
            "naive, with the likelihood probe (every character, batch 1)": naive(settings, probe_set, jobs, device,
                                                                                references),
            f"gate, running worker, with the likelihood probe (shortlist {probe_set.likelihood.shortlist or 'off'})":
                gate_design(settings, probe_set, jobs, device, warm=True, references=references)}
    print(f"\n{len(jobs)} LoRAs, {sum(len(p) for _, p, _ in jobs)} probe renders, probe set {probe_set.id}, "
          f"device {device}, torch threads {torch.get_num_threads()}, {len(references)} registered characters\n")
    print(f"| {'design':<72} | {'seconds':>8} | {'probe images/s':>14} | {'LoRAs/min':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 74}|{'-' * 10}|{'-' * 16}|{'-' * 11}|{'-' * 10}|")
    for table in (rows, with_likelihood):  # each against the first row of its own kind
        baseline = next(iter(table.values()), (0, 0))
        for name, (seconds, images) in table.items():
            print(f"| {name:<72} | {seconds:>8.1f} | {images / seconds:>14.2f} | {len(jobs) / seconds * 60:>9.2f} "
                  f"| {baseline[0] / seconds:>7.2f}x |")

if __name__ == "__main__":
    main()
