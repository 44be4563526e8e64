"""The likelihood probe's cost per LoRA as the registry grows: 14, 100, 1,000 and 10,000 characters.

The registry: the fixture world's 11 registered characters, plus composite characters drawn from random specs
(the generator the world's embedder was trained on: a generic figure with random accessories and colours),
four references each. Each size is written as the snapshot a probe worker reads (probes/snapshot.py).

Per LoRA, the renders and their vectors do not depend on the registry: each of the 20 fixture LoRAs is rendered
once (timed) and that time counts in every row. Then, at each size:

- baseline: the rule before the index (every character screened on its first references by the likelihood
  probe, the strongest `shortlist` measured in full), on the first `--baseline-loras` LoRAs (at the largest
  size the first `--largest-baseline-loras`: on a CPU it takes over ten minutes a LoRA there);
- the gate: the snapshot's index cuts the registry to `index_shortlist` characters nearest the renders, then
  the same screen and full measurement; on every LoRA.

Detection, per size: a character LoRA is caught when its character's full-measured gain reaches the shipped
calibration's quarantine threshold (`likelihood_quarantine`) and is the strongest; a clean LoRA is a false
positive when any full-measured gain reaches it. "Refitted" says whether a threshold fitted at that size
(between the clean LoRAs' highest gain and the caught ones' lowest) still separates them all.

Also printed: the first LoRA a fresh engine serves at 1,000 characters against a warm one (the warm-up), and
this process's resident memory before and after the 10,000-character snapshot is used.

    python -m benchmarks.registry_scaling [--sizes 14,100,1000,10000] [--baseline-loras 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file

from fixtures.worldgen.characters import REFERENCE_FRAMINGS
from fixtures.worldgen.figures import random_composite_figure
from fixtures.worldgen.scenes import FIGURE_PALETTE, figure_scene
from gate.config import load_settings
from gate.detection.scanner import Scanner
from gate.intake import inspect_file
from gate.record.db import open_db
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set
from probes.shortlist import candidates
from probes.snapshot import read_snapshot, reference_rows, write_snapshot

REFERENCES = 4  # per generated character


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def distractors(work: Path, count: int, embed, seed: int = 7) -> tuple[list[list[str]], np.ndarray]:
    """`count` generated characters' reference paths and vectors, drawn and embedded once into `work`."""
    folder, vectors_file = work / f"distractors-{seed}", work / f"distractors-{seed}-{count}.npy"
    paths = [[str(folder / f"{i:05d}" / f"ref_{j}.png") for j in range(REFERENCES)] for i in range(count)]
    if vectors_file.is_file() and all(Path(p[-1]).is_file() for p in paths[-1:]):
        return paths, np.load(vectors_file)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        parts = random_composite_figure(rng, FIGURE_PALETTE)
        (folder / f"{i:05d}").mkdir(parents=True, exist_ok=True)
        for j in range(REFERENCES):
            image = figure_scene(rng, parts, REFERENCE_FRAMINGS[j], "").image()
            Image.fromarray(image).save(paths[i][j])
            images.append(image)
    vectors = np.concatenate([embed(np.stack(images[k:k + 512])) for k in range(0, len(images), 512)])
    np.save(vectors_file, vectors)
    return paths, vectors


def snapshot_of(root: Path, embedder: str, real: list[dict], fake_paths, fake_vectors, size: int):
    characters = [{"id": c["id"], "name": c["name"], "policy": "block"} for c in real]
    owners, paths, vectors = [], [], []
    for index, character in enumerate(real):
        owners += [index] * len(character["paths"])
        paths += character["paths"]
        vectors.append(character["vectors"])
    for k in range(size - len(real)):
        characters.append({"id": f"generated_{k:05d}", "name": f"generated character {k}", "policy": "block"})
        owners += [len(characters) - 1] * REFERENCES
        paths += fake_paths[k]
        vectors.append(fake_vectors[k * REFERENCES:(k + 1) * REFERENCES])
    matrix = np.concatenate(vectors).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rows = reference_rows(owners, range(len(owners)), [f"{i:064x}" for i in range(len(owners))], paths)
    started = time.perf_counter()
    version = write_snapshot(root, {"embedder": embedder, "characters": characters}, rows, matrix)
    written = time.perf_counter() - started
    return read_snapshot(root / version, version), written


def likelihood(engine: ProbeEngine, probed: dict, pick) -> tuple[float, list, dict]:
    """The likelihood part of one LoRA's probe under `pick` (the engine's candidates): seconds, gains, scope."""
    started = time.perf_counter()
    references, scope = pick(probed["lora_vectors"], probed["base_vectors"])
    with engine.renderer.lora(load_file(str(probed["path"])), probed["modules"]):
        gains = engine.likelihood.gains(references, probed["triggers"], engine.renderer.without_lora)
    return time.perf_counter() - started, gains, scope


def judge(lora: dict, gains, threshold: float) -> dict:
    full = [g for g in gains if not g.screened]
    top = max(full, key=lambda g: g.gain, default=None)
    own = next((g.gain for g in full if g.character_id == lora["character"]), None)
    return {"caught": own is not None and own >= threshold and top.character_id == lora["character"],
            "flagged": bool(top and top.gain >= threshold), "own": own, "top": top.gain if top else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="14,100,1000,10000")
    parser.add_argument("--baseline-loras", type=int, default=4, help="LoRAs the baseline rule is timed on")
    parser.add_argument("--largest-baseline-loras", type=int, default=1,
                        help="at the largest size, where the baseline takes minutes a LoRA on a CPU")
    parser.add_argument("--work", default=None, help="keeps the generated characters between runs")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="gate-registry-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = load_settings({"data_dir": str(work / "data")})
    world = World.load(settings.world_dir)
    probe_set = load_probe_set(settings.probe_set)
    spec = probe_set.likelihood
    threshold = json.loads(settings.calibration_file.read_text())["thresholds"]["likelihood_quarantine"]
    engine = ProbeEngine(settings.base_model, settings.embedder, probe_set, settings.device)
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    scanner = Scanner(settings, db, engine)

    real = []
    for character in world.characters(registered=True):
        paths = [str(world.path(p)) for p in character["references"]]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        real.append({"id": character["id"], "name": character["name"], "paths": paths,
                     "vectors": engine.embed(np.stack(images))})
    mark = time.perf_counter()
    fake_paths, fake_vectors = distractors(work, max(sizes) - len(real), engine.embed)
    print(f"generated characters ready in {time.perf_counter() - mark:.1f} s", flush=True)

    probed = {}
    for lora in world.loras():
        path = world.path(lora["path"])
        inspection = inspect_file(path, settings.intake)
        screened = scanner.screen(path, path.name)
        request = scanner.probe_request(screened)
        started = time.perf_counter()
        outcome = engine.probe(path, lora_format=request["lora_format"], family=request["family"],
                               modules=request["modules"], terms=request["terms"])
        rendered = time.perf_counter() - started
        count = len(engine.probe_set.probes(request["terms"]))
        probed[lora["id"]] = {"lora": lora, "path": path, "modules": request["modules"], "renders": rendered,
                              "triggers": request["terms"]["trigger"], "named": request["named"],
                              "lora_vectors": outcome.lora_embeddings[:count],
                              "base_vectors": outcome.base_embeddings[:count], "inspection": inspection}
    print(f"rendered {len(probed)} LoRAs; renders {statistics.median(p['renders'] for p in probed.values()):.2f} s "
          "a LoRA (median)", flush=True)
    rows, memory = [], {"before": resident_mb()}
    for size in sizes:
        timed = list(probed)[: args.largest_baseline_loras if size == max(sizes) else args.baseline_loras]
        snapshot, written = snapshot_of(work / "snapshots", engine.embedder_id, real, fake_paths, fake_vectors, size)
        per_rule = {}
        for rule, count, loras in (("baseline", 0, timed), ("gate", spec.index_shortlist, list(probed))):
            seconds, verdicts, shortlisted = {}, {}, []
            for lora_id in loras:
                entry = probed[lora_id]
                pick = candidates(snapshot, entry["named"], count, lambda p, d: p, spec.references)
                spent, gains, scope = likelihood(engine, entry, pick)
                seconds[lora_id] = entry["renders"] + spent
                verdicts[lora_id] = judge(entry["lora"], gains, threshold)
                shortlisted.append(scope["shortlisted"])
            per_rule[rule] = (seconds, verdicts, shortlisted)
        if size == max(sizes):
            memory["after"] = resident_mb()
        rows.append((size, written, per_rule))
        print_row(size, written, per_rule, timed, probed)
    warmup(settings, probe_set, probed, real, fake_paths, fake_vectors, work, spec, sizes)
    print(f"\nresident memory: {memory['before']:.0f} MB before the snapshots, {memory.get('after', 0):.0f} MB after "
          f"probing against {max(sizes):,} characters (references memory-mapped)")


def print_row(size, written, per_rule, timed, probed) -> None:
    base_seconds, _, _ = per_rule["baseline"]
    seconds, verdicts, shortlisted = per_rule["gate"]
    characters = [i for i in verdicts if probed[i]["lora"]["kind"] == "character"]
    clean = [i for i in verdicts if probed[i]["lora"]["kind"] != "character"]
    caught = sum(verdicts[i]["caught"] for i in characters)
    flagged = sum(verdicts[i]["flagged"] for i in clean)
    lowest = min((verdicts[i]["own"] or -1) for i in characters)
    highest = max((verdicts[i]["top"] or -1) for i in clean)
    baseline = statistics.median(base_seconds.values())
    gate_same = statistics.median(seconds[i] for i in timed)
    print(f"| {size:,} | snapshot written in {written:.2f} s | baseline {baseline:.2f} s a LoRA | "
          f"gate {gate_same:.2f} s on the same LoRAs ({baseline / gate_same:.2f}x), "
          f"{statistics.median(seconds.values()):.2f} s on all 20, shortlist {max(shortlisted)} | "
          f"recall {caught}/{len(characters)}, clean flagged {flagged}/{len(clean)} | "
          f"refitted: {'separable' if lowest > highest else 'NOT separable'} "
          f"(lowest caught gain {lowest:.3f}, highest clean {highest:.3f}) |", flush=True)


def warmup(settings, probe_set, probed, real, fake_paths, fake_vectors, work, spec, sizes) -> None:
    """A fresh engine's first LoRA at 1,000 characters (its likelihood base errors not yet measured) against the
    same LoRA once warm; the renders are measured, not carried over."""
    size = 1000 if 1000 in sizes else sizes[0]
    mark = time.perf_counter()
    engine = ProbeEngine(settings.base_model, settings.embedder, probe_set, settings.device)
    loaded = time.perf_counter() - mark
    snapshot, _ = snapshot_of(work / "snapshots", engine.embedder_id, real, fake_paths, fake_vectors, size)
    entry = next(iter(probed.values()))
    times = []
    for _ in range(2):
        started = time.perf_counter()
        engine.probe(entry["path"], lora_format=entry["inspection"].layout.format,
                     family=entry["inspection"].family.family, modules=entry["modules"],
                     terms={"trigger": entry["triggers"], "tag": [], "output_name": [], "registry": []},
                     candidates=candidates(snapshot, entry["named"], spec.index_shortlist, lambda p, d: p,
                                           spec.references))
        times.append(time.perf_counter() - started)
    print(f"\nwarm-up at {size:,} characters: engine load {loaded:.2f} s; first LoRA {times[0]:.2f} s, the same "
          f"LoRA warm {times[1]:.2f} s ({times[0] / times[1]:.2f}x)")


if __name__ == "__main__":
    main()
