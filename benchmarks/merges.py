"""Benchmark: character + style merges (issue 23): the gate's likelihood rules against the whole LoRA's gain
alone, judged from the same probes.

Cases are built here from the fixture world's LoRAs with fixtures.lora_transforms.merge (ΔW summed, ranks
concatenated, as kohya's merge does), the second LoRA scaled by each of --strengths:

- every character LoRA with every style LoRA, keeping the character LoRA's metadata (its triggers);
- negatives: every original-character and concept LoRA with every style, and the styles pairwise;
- both again at the first strength, factorised again by SVD as kohya's svd_merge_lora does (a rank component
  is then a mix of both LoRAs', which the parts cannot split);
- and the 20 shipped LoRAs as they are.

A merge's file name names nothing (a hash of the case): the name screening would otherwise read the character
LoRA's id in it.

Each is scanned once by the gate's scanner (renders and the likelihood probe over the world's 11 characters)
and judged three ways with the shipped calibration: by the whole LoRA's gain alone (the baseline); with the
parts too (each group of its rank components probed alone, probes/blocks.py, where the probe set measures
them); and as the gate judges, with the residual once what the LoRA does to every character is fitted out
(gate.detection.sensitivity). The parts are judged with the LoRA's other variants, its gains at other strengths
where the probe set measures them. A character case counts as caught when the verdict is block or quarantine; a
negative as flagged likewise.

    python -m benchmarks.merges [--strengths 1.0,0.5] [--json out.json] [--kinds 'character + style, SVD;...']
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fixtures.lora_transforms import Lora, merge, read_lora, scaled, transform, write_lora
from gate.config import load_settings
from gate.detection.scanner import Scanner
from gate.record.db import open_db
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set

CLEAN = ("original", "style", "concept")
FLAGGED = ("block", "quarantine")


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
    # kohya's svd_merge_lora: the summed weight change factorised again by SVD, so a rank component no longer
    # comes from one of the two LoRAs (at the first strength only: the rank blocks cannot split it at any)
    for kind, firsts in (("character + style, SVD", by_kind["character"]),
                         ("clean + style, SVD", by_kind["original"] + by_kind["concept"])):
        found += [{"first": first, "second": style, "strength": strengths[0], "kind": kind}
                  for first in firsts for style in by_kind["style"]]
    return found


def build(world: World, case: dict, into: Path) -> Path:
    path = world.path(case["first"]["path"])
    if case["second"] is None:
        return path
    first, second = read_lora(path), read_lora(world.path(case["second"]["path"]))
    merged = merge(first, scaled(second, case["strength"]))
    if case["kind"].endswith(", SVD"):
        merged = transform(merged, "svd_refactorised")
    # A file name that names nothing: the character LoRA's own name would be screened as a name (and its
    # metadata, kept, is what a merge published as the character's would carry).
    key = f"{case['first']['id']}+{case['second']['id']}@{case['strength']:g}/{case['kind']}"
    name = f"merge_{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    return write_lora(Lora(first.format, merged.modules, dict(first.metadata), "F32"), into / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strengths", default="1.0,0.5", help="the second LoRA's scale in each merge")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--kinds", help="only these kinds of case, separated by ; (e.g. 'character + style, SVD')")
    args = parser.parse_args()
    strengths = [float(s) for s in args.strengths.split(",")]

    work = Path(tempfile.mkdtemp(prefix="gate-merges-"))
    settings = load_settings({"data_dir": str(work / "data")})
    world = World.load(settings.world_dir)
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    engine = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set), settings.device)
    scanner = Scanner(settings, db, engine)

    parts = replace(scanner.thresholds, likelihood_residual=None, likelihood_sensitivity=None)
    baseline = replace(parts, likelihood_variant_quarantine=None, likelihood_variant_block=None)
    rows, started = [], time.perf_counter()
    chosen_kinds = {k.strip() for k in args.kinds.split(";")} if args.kinds else None
    for case in cases(world, strengths):
        if chosen_kinds and case["kind"] not in chosen_kinds:
            continue
        result = scanner.scan(build(world, case, work), conclude=False)
        judged = {}
        for name, thresholds in (("baseline", baseline), ("parts", parts), ("gate", scanner.thresholds)):
            scanner.conclude(result, thresholds)
            judged[name] = (result.verdict, sorted(r.kind for r in result.decision.reasons))
        measured = result.outcome.likelihood if result.outcome else []
        residual = next(((r.character_id, r.details["residual"]) for r in result.decision.reasons
                         if "residual" in r.details), None)
        rows.append({"first": case["first"]["id"], "second": case["second"]["id"] if case["second"] else None,
                     "strength": case["strength"], "kind": case["kind"], "character": case["first"].get("character"),
                     "verdict": judged["gate"][0], "reasons": judged["gate"][1], "baseline": judged["baseline"][0],
                     "with_parts": judged["parts"][0],
                     "residual": residual, "probed": bool(result.outcome and result.outcome.likelihood),
                     "gains": {g.character_id: g.gain for g in measured},
                     "whole_gains": {g.character_id: g.of_whole for g in measured},
                     "screened": [g.character_id for g in measured if g.screened],
                     "by_part": [r.character_id for r in result.decision.reasons if r.details.get("part")]})
        print(f"  {time.perf_counter() - started:6.0f} s  {rows[-1]['first']} + {rows[-1]['second']} "
              f"@{case['strength']}: {judged['gate'][0]} (baseline {judged['baseline'][0]})", flush=True)

    thresholds = scanner.thresholds
    print(f"\ncharacter + style merges, {datetime.date.today()}, {os.cpu_count()} cores, strengths {args.strengths}; "
          f"probe set {scanner.engine.probe_set.id}; likelihood thresholds: gain {thresholds.likelihood_quarantine}, "
          f"variant {thresholds.likelihood_variant_quarantine}, residual {thresholds.likelihood_residual}\n")
    print("| cases | style strength | n | not probed | baseline (the whole's gain): flagged | with the parts "
          "| the gate (+ the residual) | by a part | by the residual |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups = [("character (shipped)", None, "character"), *[(kind, s, kind) for s in strengths for kind in (
        "character + style", "clean + style", "style + style")], ("clean (shipped)", None, "clean"),
        *[(kind, strengths[0], kind) for kind in ("character + style, SVD", "clean + style, SVD")]]
    for label, strength, kind in groups:
        chosen = [row for row in rows if row["strength"] == strength and (
            row["kind"] == kind or (kind == "clean" and row["kind"] in CLEAN and row["second"] is None))]
        if not chosen:
            continue
        n = len(chosen)
        before = sum(row["baseline"] in FLAGGED for row in chosen)
        with_parts = sum(row["with_parts"] in FLAGGED for row in chosen)
        after = sum(row["verdict"] in FLAGGED for row in chosen)
        by_part = sum(bool(row["by_part"]) for row in chosen)
        by_residual = sum(row["residual"] is not None for row in chosen)
        unprobed = sum(not row["probed"] for row in chosen)
        print(f"| {label} | {strength if strength is not None else '-'} | {n} | {unprobed} | {before}/{n} "
              f"| {with_parts}/{n} | {after}/{n} | {by_part} | {by_residual} |")
    # A residual reason is right only when it names the LoRA's own character; on a negative it is a false positive.
    wrong = [row for row in rows if row["residual"] and row["residual"][0] != row["character"]]
    print(f"\nresidual reasons naming another character than the LoRA's: {len(wrong)}")
    wrong = [row for row in rows if any(c != row["character"] for c in row["by_part"])]
    print(f"part reasons naming another character than the LoRA's: {len(wrong)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
