"""Throughput benchmark: the gate's probe design against the naive way, measured in the same run.

Gate design: one resident base pipeline, each LoRA swapped in as an adapter and deleted after, base
renders cached per probe, prompts batched. Naive: a fresh pipeline per LoRA, the LoRA loaded into it,
base and LoRA renders made again for every LoRA, one prompt at a time. Both render the same probes with
the same seeds and embed their renders.

Two gate rows: a cold engine (timed from loading the pipeline; the first LoRA pays for the probe set's
shared base renders) and a worker already running (pipeline loaded, its cache holding the shared probes'
base renders, generic and registry prompts, as after its first job; base renders of each LoRA's own
trigger, tag and name prompts are still made per LoRA, inside the timing).

    python -m benchmarks.probe_throughput [--loras 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from safetensors.torch import load_file

from gate.config import load_settings
from gate.intake import inspect_file
from gate.scan import probe_terms
from gate.world import World
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
            errors = likelihood.lora_errors(references, triggers) if likelihood else None
        engine.embed(rendered)
        if likelihood:
            likelihood.gains(references, triggers, errors)
        images += len(rendered)
    return time.perf_counter() - started, images


def naive(settings, probe_set, jobs, device) -> tuple[float, int]:
    started = time.perf_counter()
    embedder = ImageEmbedder(settings.embedder, device)
    single = probe_set.__class__(**{**probe_set.__dict__, "batch_size": 1})
    images = 0
    for path, probes, _ in jobs:
        renderer = Renderer(settings.base_model, device)  # a fresh pipeline for every LoRA
        base = renderer.render(probes, single)
        renderer.pipe.load_lora_weights(load_file(path), adapter_name="lora")
        rendered = renderer.render(probes, single)
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
                                                                             warm=True),
            "gate, running worker, with the likelihood probe": gate_design(settings, probe_set, jobs, device,
                                                                           warm=True, references=references)}
    baseline = next(iter(rows.values()))
    print(f"\n{len(jobs)} LoRAs, {sum(len(p) for _, p, _ in jobs)} probe renders, probe set {probe_set.id}, "
          f"device {device}, torch threads {torch.get_num_threads()}\n")
    print(f"| {'design':<57} | {'seconds':>8} | {'probe images/s':>14} | {'LoRAs/min':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 59}|{'-' * 10}|{'-' * 16}|{'-' * 11}|{'-' * 10}|")
    for name, (seconds, images) in rows.items():
        print(f"| {name:<57} | {seconds:>8.1f} | {images / seconds:>14.2f} | {len(jobs) / seconds * 60:>9.2f} "
              f"| {baseline[0] / seconds:>7.2f}x |")


if __name__ == "__main__":
    main()
