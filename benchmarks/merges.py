"""Benchmark: character + style merges (issue 23), the gate's rule against a candidate measured from the same
probes.

Cases are built here from the fixture world's LoRAs with fixtures.lora_transforms.merge (ΔW summed, ranks
concatenated, as kohya's merge does), the second LoRA scaled by each of --strengths:

- every character LoRA with every style LoRA, keeping the character LoRA's metadata (its triggers);
- negatives: every original-character and concept LoRA with every style, and the styles pairwise;
- and the 20 shipped LoRAs as they are.

Each is scanned by the gate's scanner (renders and the likelihood probe over the world's 11 characters) and
judged with the shipped calibration: the baseline. A character case counts as caught when the verdict is block
or quarantine; a negative as flagged likewise.

The candidate, the sensitivity residual: a style moves every character's likelihood gain, some characters'
more than others. A character's sensitivity is its mean gain under the shipped clean LoRAs (without the one
judged, when that is one of them); a LoRA's gains are fitted as a + b * sensitivity by least squares, and a
character whose residual is the largest and reaches the shipped clean LoRAs' largest residual plus the
likelihood margin (0.05) is caught. Its numbers are reported beside the baseline; the gate does not use it.

    python -m benchmarks.merges [--strengths 1.0,0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fixtures.lora_transforms import Factors, Lora, merge, read_lora, write_lora
from gate.config import load_settings
from gate.detection.calibration import LIKELIHOOD_MARGINS
from gate.detection.scanner import Scanner
from gate.record.db import open_db
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set

CLEAN = ("original", "style", "concept")
FLAGGED = ("block", "quarantine")


def scaled(lora: Lora, strength: float) -> Lora:
    return Lora(lora.format, {name: Factors(f.down, f.up * strength, f.alpha) for name, f in lora.modules.items()},
                dict(lora.metadata), lora.dtype)


def cases(world: World, strengths: list[float]) -> list[dict]:
    loras = world.loras()
    by_kind = {kind: [lora for lora in loras if lora["kind"] == kind] for kind in ("character", *CLEAN)}
    found = [{"first": lora, "second": None, "strength": None, "kind": lora["kind"]} for lora in loras]
    for strength in strengths:
        for first in by_kind["character"]:
            found += [{"first": first, "second": style, "strength": strength, "kind": "character + style"}
                      for style in by_kind["style"]]
        for first in by_kind["original"] + by_kind["concept"]:
            found += [{"first": first, "second": style, "strength": strength, "kind": "clean + style"}
                      for style in by_kind["style"]]
        styles = by_kind["style"]
        found += [{"first": a, "second": b, "strength": strength, "kind": "style + style"}
                  for i, a in enumerate(styles) for b in styles[i + 1:]]
    return found


def build(world: World, case: dict, into: Path) -> Path:
    path = world.path(case["first"]["path"])
    if case["second"] is None:
        return path
    first, second = read_lora(path), read_lora(world.path(case["second"]["path"]))
    merged = merge(first, scaled(second, case["strength"]))
    name = f"{case['first']['id']}+{case['second']['id']}@{case['strength']:g}.safetensors"
    return write_lora(Lora(first.format, merged.modules, dict(first.metadata), "F32"), into / name)


def residuals(gains: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    design = np.stack([np.ones_like(sensitivity), sensitivity], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, gains, rcond=None)
    return gains - design @ coefficients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strengths", default="1.0,0.5", help="the second LoRA's scale in each merge")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    strengths = [float(s) for s in args.strengths.split(",")]

    work = Path(tempfile.mkdtemp(prefix="gate-merges-"))
    settings = load_settings({"data_dir": str(work / "data")})
    world = World.load(settings.world_dir)
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    engine = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set), settings.device)
    scanner = Scanner(settings, db, engine)
    characters = sorted(c["id"] for c in world.characters(registered=True))

    rows, started = [], time.perf_counter()
    for case in cases(world, strengths):
        result = scanner.scan(build(world, case, work), conclude=False)
        scanner.conclude(result, scanner.thresholds)
        gains = {g.character_id: g.gain for g in (result.outcome.likelihood if result.outcome else [])}
        rows.append({"first": case["first"]["id"], "second": case["second"]["id"] if case["second"] else None,
                     "strength": case["strength"], "kind": case["kind"], "character": case["first"].get("character"),
                     "verdict": result.verdict, "reasons": sorted(r.kind for r in result.decision.reasons),
                     "gains": [gains.get(c) for c in characters]})
        print(f"  {time.perf_counter() - started:6.0f} s  {rows[-1]['first']} + {rows[-1]['second']} "
              f"@{case['strength']}: {result.verdict}", flush=True)

    # The candidate: sensitivities from the shipped clean LoRAs, its threshold from their residuals.
    shipped_clean = [i for i, row in enumerate(rows) if row["second"] is None and row["kind"] in CLEAN]
    probed = [i for i, row in enumerate(rows) if None not in row["gains"]]
    matrix = {i: np.array(rows[i]["gains"], float) for i in probed}

    def sensitivity(leave_out: int | None) -> np.ndarray:
        return np.mean([matrix[i] for i in shipped_clean if i != leave_out and i in matrix], axis=0)

    floor = max(residuals(matrix[i], sensitivity(i)).max() for i in shipped_clean if i in matrix)
    threshold = floor + LIKELIHOOD_MARGINS[0]
    for i, row in enumerate(rows):
        row["candidate"] = False
        if i in matrix:
            residual = residuals(matrix[i], sensitivity(i if i in shipped_clean else None))
            top = int(residual.argmax())
            row["top_residual"] = round(float(residual[top]), 4)
            caught = residual[top] >= threshold
            row["candidate"] = bool(caught and (row["kind"] not in ("character", "character + style")
                                                or characters[top] == row["character"]))

    print(f"\ncharacter + style merges, {datetime.date.today()}, {os.cpu_count()} cores, strengths {args.strengths}; "
          f"candidate threshold {threshold:.3f} (shipped clean LoRAs' largest residual {floor:.3f} + "
          f"{LIKELIHOOD_MARGINS[0]})\n")
    print("| cases | strength | n | not probed | baseline: flagged | candidate: caught | either |")
    print("|---|---|---|---|---|---|---|")
    groups = [("character (shipped)", None, "character"), *[(kind, s, kind) for s in strengths for kind in (
        "character + style", "clean + style", "style + style")], ("clean (shipped)", None, "clean")]
    for label, strength, kind in groups:
        chosen = [row for row in rows if row["strength"] == strength and (
            row["kind"] == kind or (kind == "clean" and row["kind"] in CLEAN and row["second"] is None))]
        if not chosen:
            continue
        flagged = sum(row["verdict"] in FLAGGED for row in chosen)
        caught = sum(row["candidate"] for row in chosen)
        either = sum(row["verdict"] in FLAGGED or row["candidate"] for row in chosen)
        unprobed = sum(None in row["gains"] for row in chosen)
        print(f"| {label} | {strength if strength is not None else '-'} | {len(chosen)} | {unprobed} "
              f"| {flagged}/{len(chosen)} | {caught}/{len(chosen)} | {either}/{len(chosen)} |")
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
