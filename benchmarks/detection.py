"""Detection benchmark over the fixture world: every LoRA scanned with the real models, verdicts compared
with what the manifest expects; precision, recall and false-positive rate for block and for quarantine,
with the held-back characters reported separately.

Clean LoRAs are the calibration's negatives, so each is judged with thresholds refitted without it
(leave-one-out): every number below is out of sample.

Then the names rule (gate.detection.decisions): every LoRA that adapts the text encoder is scanned again with
its metadata stripped and a file name that names its character (the infringer's disguise: no trigger, only a
name). Each is judged with the rule and without it (the baseline, in the same run, from the same probes).

    python -m benchmarks.detection [--only ID ...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from gate.config import load_settings
from gate.detection.calibration import Subject, base_subject, calibrate, outcome_subject, write_calibration
from gate.detection.scanner import Scanner
from gate.record.db import open_db
from gate.registry.world import World, seed_registry
from probes.engine import ProbeEngine
from probes.probe_set import load_probe_set

CLEAN = ("style", "concept", "original")


def _subjects(scanner, results: dict, loras: list[dict], references, exclude: str | None) -> list[Subject]:
    """The negatives `gate calibrate` uses, from this run's probe outcomes, leaving `exclude` out."""
    return [base_subject(scanner, references)] + [
        outcome_subject(lora["id"], results[lora["id"]].outcome, references) for lora in loras
        if lora["kind"] in CLEAN and lora["id"] != exclude and results[lora["id"]].outcome is not None
    ]


def _rate(numerator: int, denominator: int) -> str:
    return f"{numerator / denominator:.2f} ({numerator}/{denominator})" if denominator else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="scan only these LoRA ids")
    parser.add_argument("--quantile", type=float, default=0.99, help="negatives' score quantile for the threshold")
    parser.add_argument("--write-calibration", type=Path,
                        help="also write the shared thresholds here (what `gate calibrate` writes for the world)")
    args = parser.parse_args()

    import tempfile

    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="gate-detect-")})
    world = World.load(settings.world_dir)
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    engine = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set), settings.device)
    scanner = Scanner(settings, db, engine, thresholds=None)
    loras = [lora for lora in world.loras() if not args.only or lora["id"] in args.only]

    started = time.perf_counter()
    results = {}
    for lora in loras:
        results[lora["id"]] = scanner.scan(world.path(lora["path"]), conclude=False)
        print(f"  scanned {lora['id']:<32} {time.perf_counter() - started:7.1f}s", flush=True)

    calibration_refs = scanner.references.without(world.held_back())
    shared = calibrate(_subjects(scanner, results, loras, calibration_refs, exclude=None), args.quantile)
    if args.write_calibration:
        negatives = [Path(lora["path"]).name for lora in loras if lora["kind"] in CLEAN]
        write_calibration(args.write_calibration, shared, probe_set_id=engine.probe_set.id,
                          embedder_id=engine.embedder_id, negatives=negatives,
                          characters=list(calibration_refs.character_ids))
    rows = []
    for lora in loras:
        result = results[lora["id"]]
        thresholds = (calibrate(_subjects(scanner, results, loras, calibration_refs, exclude=lora["id"]), args.quantile)
                      if lora["kind"] in CLEAN else shared)
        # The baseline, in the same run: the same evidence judged on the renders alone (likelihood off).
        renders_alone = scanner.conclude(result, replace(thresholds, likelihood_quarantine=None,
                                                         likelihood_block=None)).verdict
        # And with the fixed counts alone, without the chance count that grows with a LoRA's renders.
        fixed_counts = scanner.conclude(result, replace(thresholds, render_false_rate=None)).verdict
        undeclared, result.undeclared_trigger = result.undeclared_trigger, False  # and without the names rule
        no_names_rule = scanner.conclude(result, thresholds).verdict
        result.undeclared_trigger = undeclared
        scanner.conclude(result, thresholds)
        top = result.matches[0] if result.matches else None
        blocked_for = {r.character_id for r in result.decision.reasons if r.verdict == "block"}
        gains = [g for g in (result.outcome.likelihood if result.outcome is not None else []) if not g.screened]
        gain = f"{gains[0].character_id} {gains[0].gain:+.3f}" if gains else "-"  # the strongest measured in full
        rows.append({**lora, "verdict": result.verdict, "renders_alone": renders_alone,
                     "fixed_counts": fixed_counts, "no_names_rule": no_names_rule, "top": top,
                     "blocked_for": blocked_for, "gain": gain,
                     "reasons": result.decision.reasons})

    print(f"\nprobe set {engine.probe_set.id}; shared thresholds: {shared.to_dict() | {'provenance': '...'}}\n")
    print(f"| {'LoRA':<30} | {'kind':<9} | {'character':<13} | {'held':<4} | {'expected':<10} | {'verdict':<10} "
          f"| {'matched':>7} | {'best':>5} | {'top likelihood gain':<24} | reasons |")
    print("|" + "|".join("-" * w for w in (32, 11, 15, 6, 12, 12, 9, 7, 26, 9)) + "|")
    for row in rows:
        top = row["top"]
        print(f"| {row['id']:<30} | {row['kind']:<9} | {row['character'] or '-':<13} | "
              f"{'yes' if row['held_back'] else '':<4} | {row['expected']:<10} | {row['verdict']:<10} | "
              f"{(f'{top.matched}/{top.rendered}' if top else '-'):>7} | "
              f"{(f'{top.best_score:.3f}' if top else '-'):>5} | {row['gain']:<24} | "
              f"{', '.join(r.kind for r in row['reasons']) or '-'} |")

    wrong = [row for row in rows if row["verdict"] != row["expected"]]
    if wrong:
        print("\nVerdicts other than expected, with their reasons:")
    for row in wrong:
        print(f"- {row['id']} ({row['expected']} expected, {row['verdict']} given)")
        for reason in row["reasons"]:
            print(f"  - {reason.verdict}: {reason.message}")

    def flagged(row):
        return row["verdict"] in ("quarantine", "block")

    infringing = [r for r in rows if r["expected"] != "allow"]
    print("\n| measure | seen characters | held-back characters | all |")
    print("|---|---|---|---|")
    for label, test in (
        ("recall (quarantine or block)", flagged),
        ("recall (quarantine or block), renders alone: baseline", lambda r: r["renders_alone"] != "allow"),
        ("recall (quarantine or block), fixed counts: baseline", lambda r: r["fixed_counts"] != "allow"),
        ("recall of block policy (auto-blocked)", lambda r: r["verdict"] == "block"),
    ):
        groups = []
        for group in ([r for r in infringing if not r["held_back"]], [r for r in infringing if r["held_back"]],
                      infringing):
            pool = [r for r in group if label.startswith("recall (") or r["expected"] == "block"]
            groups.append(_rate(sum(test(r) for r in pool), len(pool)))
        print(f"| {label} | {' | '.join(groups)} |")
    clean = [r for r in rows if r["expected"] == "allow"]
    blocked = [r for r in rows if r["verdict"] == "block"]
    correct_blocks = sum(r["expected"] == "block" and r["blocked_for"] == {r["character"]} for r in blocked)
    quarantined = [r for r in rows if r["verdict"] == "quarantine"]
    print(f"| false positives on clean LoRAs (flagged) | | | {_rate(sum(flagged(r) for r in clean), len(clean))} |")
    print(f"| false positives on clean LoRAs, renders alone: baseline | | | "
          f"{_rate(sum(r['renders_alone'] != 'allow' for r in clean), len(clean))} |")
    print(f"| false positives on clean LoRAs, fixed counts: baseline | | | "
          f"{_rate(sum(r['fixed_counts'] != 'allow' for r in clean), len(clean))} |")
    print(f"| false positives on clean LoRAs, without the names rule: baseline | | | "
          f"{_rate(sum(r['no_names_rule'] != 'allow' for r in clean), len(clean))} |")
    print(f"| block precision (right LoRA, right character) | | | {_rate(correct_blocks, len(blocked))} |")
    print(f"| quarantine precision (an infringing LoRA) | | | "
          f"{_rate(sum(r['expected'] != 'allow' for r in quarantined), len(quarantined))} |")
    _names_rule(scanner, world, loras, shared)
    print(f"\nscanned {len(rows)} LoRAs and their disguised copies in {time.perf_counter() - started:.0f}s on "
          f"{engine.renderer.device}")


def _names_rule(scanner, world, loras: list[dict], thresholds) -> None:
    """The disguised copies of the LoRAs that adapt the text encoder, with the names rule and without it."""
    import tempfile

    from fixtures.lora_transforms import Lora, read_lora, write_lora

    names = {c["id"]: c["name"] for c in world.manifest["characters"]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gate-disguised-") as tmp:
        for lora in (lora for lora in loras if lora.get("text_encoder") and lora.get("character")):
            source = read_lora(world.path(lora["path"]))
            target = Path(tmp) / f"{names[lora['character']].replace(' ', '_')}_v2.safetensors"
            write_lora(Lora(source.format, source.modules, {}, source.dtype), target)
            result = scanner.conclude(scanner.scan(target, conclude=False), thresholds)
            with_rule = result.verdict
            result.undeclared_trigger = False
            without = scanner.conclude(result, thresholds).verdict
            gain = next((g.gain for g in result.outcome.likelihood if g.character_id == lora["character"]), None)
            rows.append((lora, with_rule, without, gain))
    print("\nDisguised copies (metadata stripped, the file named after the character), the names rule:\n")
    print("| LoRA | kind | expected | with the rule | without it: baseline | its character's gain, disguised |")
    print("|---|---|---|---|---|---|")
    for lora, with_rule, without, gain in rows:
        shown = "-" if gain is None else f"{gain:+.3f}"
        print(f"| {lora['id']} | {lora['kind']} | {lora['expected']} | {with_rule} | {without} | {shown} |")
    infringing = [r for r in rows if r[0]["expected"] != "allow"]
    clean = [r for r in rows if r[0]["expected"] == "allow"]
    print(f"\nrecall with the rule {_rate(sum(r[1] != 'allow' for r in infringing), len(infringing))}, without "
          f"{_rate(sum(r[2] != 'allow' for r in infringing), len(infringing))}; clean copies flagged with the rule "
          f"{_rate(sum(r[1] != 'allow' for r in clean), len(clean))}, without "
          f"{_rate(sum(r[2] != 'allow' for r in clean), len(clean))}")


if __name__ == "__main__":
    main()
