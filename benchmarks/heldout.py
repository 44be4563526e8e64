"""Benchmark: the held-back set (fixtures/heldout: characters and LoRAs nothing is tuned on) and the shipped
world, judged by the gate's probe set (fixture-v3: undeclared triggers recovered, a merge's parts measured
alone, the LoRA measured at other strengths too) against the probe set before those (fixture-v1) as the baseline,
both in the same run.

The registry is the world's 11 registered characters and the 3 registered held-back ones. Cases:

- each held-back character LoRA as built: text encoder trained behind a trigger of several BPE pieces, metadata
  stripped, a file name that names nothing (one with a prior of generic figures alone);
- the held-back clean LoRAs (an original nobody registered, a style the world has no LoRA of), as built;
- each held-back LoRA at half and at double strength (weights scaled, as published for users to load at another
  weight), and merged with every style LoRA of the world at --strengths (ranks concatenated);
- the 20 shipped LoRAs as they are, against the larger registry, the 11 character LoRAs at half and double
  strength, and the 9 clean ones at double and four times their weight (and the held-back clean ones at four
  times too): a clean LoRA published overweight moves every character further than calibration saw.

Each case is scanned once under each probe set and judged four ways: the baseline (fixture-v1) and the gate
(fixture-v3), each calibrated in this run as `gate calibrate` fits after the held-back characters are registered
(on the world's clean LoRAs alone, each clean LoRA and its rescaled copies judged by a fit without it); the gate
with the shipped calibration (fitted before they were registered); and the gate refitted but with every residual
read whole, as before 2026-12-08 (gate.detection.sensitivity: beyond the reach calibration saw, a residual is
read in proportion). A character case counts as caught when the verdict is block
or quarantine; an auto-block is correct when the LoRA is of the character it names. Cost: each case's probe
time (renders, embedding, likelihood) under each probe set, and their ratio.

    python -m benchmarks.heldout [--strengths 1.0,0.5] [--json out.json] [--cases REGEX]

--cases scans only the cases whose name matches (e.g. 'heldout_07' for one LoRA, its rescaled copies and its
merges), with the shipped clean LoRAs the refitted calibrations are fitted on.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fixtures.heldout import REFERENCES, characters, loras
from fixtures.lora_transforms import Lora, merge, read_lora, scaled, write_lora
from fixtures.worldgen.settings import REPO_ROOT
from gate.config import load_settings
from gate.detection.calibration import base_subject, calibrate, outcome_subject
from gate.detection.scanner import Scanner
from gate.record.db import open_db
from gate.registry.characters import add_character
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set

FLAGGED = ("block", "quarantine")
CLEAN = ("original", "style", "concept")
BASELINE, GATE = "fixture-v1", "fixture-v3"
SCALES = (0.5, 2.0)  # a LoRA published weaker or stronger than it was trained
CLEAN_SCALES = (2.0, 4.0)  # a clean LoRA published overweight: the shipped clean ones' copies


def cases(world: World, strengths: list[float]) -> list[dict]:
    styles = [lora for lora in world.loras() if lora["kind"] == "style"]
    found = []
    for held in loras():
        path = REPO_ROOT / held["path"]
        clean = held.get("kind", "character") != "character"
        character = None if clean else held["character"]
        group = "clean" if clean else "character"
        found.append({"name": held["id"], "path": path, "set": "held back", "kind": f"{group}, as built",
                      "character": character})
        found += [{"name": f"{held['id']}@{scale:g}", "path": path, "scale": scale, "set": "held back",
                   "kind": f"{group}, scaled x{scale:g}", "character": character}
                  for scale in (sorted({*SCALES, *CLEAN_SCALES}) if clean else SCALES)]
        for strength in strengths:
            found += [{"name": f"{held['id']}+{style['id']}@{strength:g}", "path": path,
                       "style": world.path(style["path"]), "strength": strength, "set": "held back",
                       "kind": f"{group} + style @{strength:g}", "character": character} for style in styles]
    for lora in world.loras():
        clean = lora["kind"] in CLEAN
        found.append({"name": lora["id"], "path": world.path(lora["path"]), "set": "shipped",
                      "kind": "clean" if clean else "character", "character": None if clean else lora["character"]})
    for scale in CLEAN_SCALES:  # each judged by a refit without the clean LoRA it is a copy of
        found += [{"name": f"{lora['id']}@{scale:g}", "path": world.path(lora["path"]), "scale": scale,
                   "set": "shipped", "kind": f"clean, scaled x{scale:g}", "character": None, "source": lora["id"]}
                  for lora in world.loras() if lora["kind"] in CLEAN]
    for scale in SCALES:
        found += [{"name": f"{lora['id']}@{scale:g}", "path": world.path(lora["path"]), "scale": scale,
                   "set": "shipped", "kind": f"character, scaled x{scale:g}", "character": lora["character"]}
                  for lora in world.loras() if lora["kind"] not in CLEAN]
    return found


def build(case: dict, into: Path) -> Path:
    if "scale" not in case and "style" not in case:
        return case["path"]
    first = read_lora(case["path"])
    lora = scaled(first, case["scale"]) if "scale" in case else merge(
        first, scaled(read_lora(case["style"]), case["strength"]))
    # A neutral name (the same in every run), and the first file's metadata (none: the held-back files are
    # stripped; the shipped ones keep theirs).
    return write_lora(Lora(first.format, lora.modules, dict(first.metadata), "F32"),
                      into / f"case_{hashlib.sha256(case['name'].encode()).hexdigest()[:8]}.safetensors")


def register_held_back(db, store: Path) -> None:
    for character in (c for c in characters() if c.registered):  # the held-back original stays unregistered
        add_character(db, store, character_id=character.id, name=character.name, aliases=list(character.aliases),
                      rights_holder=character.rights_holder, policy=character.policy,
                      description=character.description,
                      references=sorted((REFERENCES / character.id).glob("ref_*.png")))


def _limits(thresholds) -> str:
    return " / ".join(str(getattr(thresholds, f"likelihood_{k}")) for k in ("quarantine", "block", "residual"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strengths", default="1.0,0.5", help="the style's scale in each merge")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cases", type=re.compile, help="only the cases whose name matches this (and the "
                        "shipped clean LoRAs, which the refits are fitted on)")
    args = parser.parse_args()
    strengths = [float(s) for s in args.strengths.split(",")]
    if not loras():
        raise SystemExit("no held-back LoRAs: build them with python -m fixtures.heldout.build")

    work = Path(tempfile.mkdtemp(prefix="gate-heldout-"))
    settings = load_settings({"data_dir": str(work / "data")})
    world = World.load(settings.world_dir)
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    register_held_back(db, settings.references_dir)
    scanners = {name: Scanner(settings, db, ProbeEngine(settings.base_model, settings.embedder,
                                                        load_probe_set(name), settings.device))
                for name in (BASELINE, GATE)}
    policies = {c["id"]: c["policy"] for c in world.characters(registered=True)} | {
        c.id: c.policy for c in characters() if c.registered}

    for scanner in scanners.values():  # base renders and the base model's fits made once, before the timings
        scanner.scan(REPO_ROOT / loras()[0]["path"], conclude=False)
    results, started = [], time.perf_counter()
    chosen = [case for case in cases(world, strengths) if args.cases is None or args.cases.search(case["name"])
              or (case["set"], case["kind"]) == ("shipped", "clean")]
    for case in chosen:
        path = build(case, work)
        scanned = {}
        for name, scanner in scanners.items():
            mark = time.perf_counter()
            scanned[name] = (scanner.scan(path, conclude=False), time.perf_counter() - mark)
        results.append((case, scanned))
        print(f"  {time.perf_counter() - started:6.0f} s  scanned {case['name']}", flush=True)

    # Three judgements of the same scans. The shipped calibration was fitted before the held-back characters
    # were registered (they have no likelihood sensitivity, so the residual rule passes them by); an operator
    # who registers characters runs `gate calibrate` again, which fits on the clean LoRAs alone. Here each probe
    # set is fitted that way on this run's scans of the world's clean LoRAs (each clean LoRA judged by a fit
    # without it), so the baseline is calibrated as the gate is.
    shipped = scanners[GATE].thresholds
    references = scanners[GATE].references.without(world.held_back())

    def refit(probe_set: str, exclude: str | None):
        return calibrate([base_subject(scanners[probe_set], references)] + [
            outcome_subject(case["name"], scanned[probe_set][0].outcome, references) for case, scanned in results
            if case["set"] == "shipped" and case["kind"] == "clean" and case["name"] != exclude
            and scanned[probe_set][0].outcome is not None])

    fitted = {name: refit(name, None) for name in scanners}

    def fit_for(probe_set: str):
        return lambda case: (refit(probe_set, case.get("source", case["name"])) if case["kind"].startswith("clean")
                             and case["set"] == "shipped" else fitted[probe_set])

    def read_whole(case):
        return replace(fit_for(GATE)(case), likelihood_effect_reach=None)

    judgements = {"baseline": (BASELINE, fit_for(BASELINE)), "shipped": (GATE, lambda case: shipped),
                  "gate": (GATE, fit_for(GATE)), "whole": (GATE, read_whole)}
    rows = []
    for case, scanned in results:
        row = {key: case[key] for key in ("name", "set", "kind", "character")}
        row["seconds"] = {name: round(seconds, 2) for name, (_, seconds) in scanned.items()}
        measured = scanned[GATE][0].outcome.likelihood if scanned[GATE][0].outcome else []
        row["whole_gains"] = {g.character_id: g.of_whole for g in measured}  # for judging other rules from the JSON
        row["screened"] = [g.character_id for g in measured if g.screened]
        for label, (probe_set, thresholds) in judgements.items():
            result = scanners[probe_set].conclude(scanned[probe_set][0], thresholds(case))
            reasons = result.decision.reasons
            top = result.outcome.likelihood[0] if result.outcome and result.outcome.likelihood else None
            row[label] = {"verdict": str(result.verdict),
                          "blocked": [r.character_id for r in reasons if r.verdict == "block" and r.character_id],
                          "recovered": [r.character_id for r in reasons if r.details.get("recovered_trigger")],
                          "residual": [r.character_id for r in reasons if "residual" in r.details],
                          "part": [r.character_id for r in reasons if r.details.get("part")],
                          "strength": [r.character_id for r in reasons if r.details.get("strength")],
                          "top": [top.character_id, top.gain, top.recovered] if top else None}
        rows.append(row)

    print(f"\nheld-back set and shipped world, {datetime.date.today()}, {os.cpu_count()} cores; registry "
          f"{len(policies)} characters ({sum(c.registered for c in characters())} held back); likelihood "
          f"thresholds (quarantine / block / residual): shipped {_limits(shipped)}, "
          + ", ".join(f"{name} refitted {_limits(t)}" for name, t in fitted.items()) + "\n")
    print(f"| set | cases | n | baseline ({BASELINE}) | the gate ({GATE}), shipped calibration | the gate, residual "
          "read whole | the gate | by a recovered trigger | by a merge's part | at another strength | by the residual "
          "| auto-blocks wrong |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for group in dict.fromkeys((row["set"], row["kind"]) for row in rows):
        chosen = [row for row in rows if (row["set"], row["kind"]) == group]
        n = len(chosen)
        flagged = {label: sum(row[label]["verdict"] in FLAGGED for row in chosen) for label in judgements}
        by_recovery = sum(bool(row["gate"]["recovered"]) for row in chosen)
        by_residual = sum(bool(row["gate"]["residual"]) for row in chosen)
        by_part = sum(bool(row["gate"]["part"]) for row in chosen)
        by_strength = sum(bool(row["gate"]["strength"]) for row in chosen)
        wrong = sum(any(c != row["character"] for label in judgements for c in row[label]["blocked"])
                    for row in chosen)
        print(f"| {group[0]} | {group[1]} | {n} | {flagged['baseline']}/{n} | {flagged['shipped']}/{n} "
              f"| {flagged['whole']}/{n} | {flagged['gate']}/{n} | {by_recovery} | {by_part} | {by_strength} "
              f"| {by_residual} | {wrong} |")
    for label in ("held back", "shipped"):
        chosen = [row for row in rows if row["set"] == label]
        base_s, gate_s = (sum(row["seconds"][name] for row in chosen) for name in (BASELINE, GATE))
        print(f"\nprobe time, {label}: {base_s / len(chosen):.2f} s a LoRA under {BASELINE}, "
              f"{gate_s / len(chosen):.2f} s under {GATE} ({gate_s / base_s:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
