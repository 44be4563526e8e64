"""`gate inspect`, `gate scan` and `gate calibrate`: the operator's checks of LoRA files, in this
process (inspect never loads torch; scan and calibrate load the probe engine through gate.engines)."""

from __future__ import annotations

import json
import sys

import click

from gate.cli import common

EXIT_REFUSED = 3


def _summary(result: dict) -> str:
    lines = [click.style(result["path"], bold=True)]
    if not result["ok"]:
        error = result["error"]
        lines.append(f"  {click.style('refused', fg='red', bold=True)}   {error['code']}: {error['message']}")
        return "\n".join(lines)
    lora, meta = result["lora"], result["metadata"]
    parts = ", ".join(f"{name} {count}" for name, count in lora["components"].items())
    dora = " DoRA" if lora["dora"] else ""
    rank = f"rank {result['rank']}" if result["rank"] else "no rank"  # OFT and LyCORIS full have none
    lines.append(
        f"  {click.style('accepted', fg='green', bold=True)}  {result['format']}{dora} LoRA for "
        f"{result['base_family']} ({rank}, {lora['modules']} modules: {parts})"
    )
    lines.append(f"  family    evidence: {'; '.join(result['family']['evidence']) or 'none'}; "
                 f"metadata claims {result['family']['claimed'] or 'nothing'}")
    dtypes = ", ".join(result["dtypes"])
    lines.append(f"  size      {result['file_size']:,} bytes, {result['tensors']} tensors ({dtypes})")
    lines.append(f"  sha256    {result['file_sha256']}")
    lines.append(f"  tensors#  {result['tensor_hash']}")
    named = [f"{label} {value!r}" for label, value in (
        ("title", meta["title"]), ("output", meta["output_name"]),
        ("trigger", ", ".join(meta["trigger_phrases"]) or None),
    ) if value]
    if meta["top_tags"]:
        named.append("tags " + ", ".join(f"{tag}({count})" for tag, count in meta["top_tags"][:6]))
    lines.append(f"  metadata  {'; '.join(named) or 'none'}")
    if lora["embeddings"]:
        lines.append(f"  embeds    {', '.join(lora['embeddings'])} (bundled textual-inversion tokens: screened as "
                     "names, typed by the probes)")
    lines.extend(f"  {click.style('warning', fg='yellow')}   {w}" for w in result["warnings"])
    return "\n".join(lines)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file (JSON Lines).")
def inspect(paths: tuple[str, ...], as_json: bool) -> None:
    """Check LoRA files without loading them: format, base family, metadata, hashes.

    Exit status 0 when every file is an acceptable LoRA, 3 when any was refused.

    Example: gate inspect --json my_lora.safetensors
    """
    from gate.intake import inspect_file

    limits = common.settings().intake
    refused = False
    for path in paths:
        result = inspect_file(path, limits).to_dict()
        refused |= not result["ok"]
        click.echo(json.dumps(result, ensure_ascii=False) if as_json else _summary(result))
    sys.exit(EXIT_REFUSED if refused else 0)


def _print_scan(result) -> None:
    verdict = result.verdict or "refused"
    colour = {"allow": "green", "quarantine": "yellow", "block": "red"}.get(verdict, "red")
    click.echo(f"{click.style(result.path, bold=True)}: {click.style(verdict.upper(), fg=colour, bold=True)}")
    if not result.inspection.ok:
        click.echo(f"  {result.inspection.error.code}: {result.inspection.error.message}")
        return
    for reason in result.decision.reasons:
        click.echo(f"  - {reason.message}")
    if not result.decision.reasons:
        click.echo("  - no registered character in any probe render, no metadata hit")
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    click.echo(f"  probe set {result.probe_set or 'none'}; {timings}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file (JSON Lines).")
@click.option("--evidence", type=click.Path(file_okay=False), help="Write a contact sheet and HTML page here.")
def scan(paths: tuple[str, ...], as_json: bool, evidence: str | None) -> None:
    """Scan LoRA files: intake, name screening, probe renders, matching, verdict with reasons.

    Exit status 0 whatever the verdict, 3 when intake refused any file.

    Example: gate scan --evidence out/ my_lora.safetensors
    """
    from pathlib import Path

    from gate.detection.scanner import ScanResult
    from gate.intake import inspect_file

    settings = common.settings()
    scanner = None  # the base model loads for the first file that intake accepts, not before
    refused = False
    for path in paths:
        inspection = inspect_file(path, settings.intake)
        if not inspection.ok:
            result = ScanResult(str(path), inspection)
        elif as_json:
            scanner = scanner or common.scanner(settings, common.record(settings))
            result = scanner.scan(path, inspection=inspection)
        else:
            scanner = scanner or common.scanner(settings, common.record(settings), click.echo)
            with click.progressbar(length=5, label=Path(path).name, show_eta=False) as bar:
                result = scanner.scan(path, progress=lambda stage: bar.update(1), inspection=inspection)
        refused |= not result.inspection.ok
        if evidence and result.decision:
            from gate.detection.evidence import write_evidence

            target = Path(evidence) / Path(path).stem if len(paths) > 1 else Path(evidence)
            write_evidence(result, scanner.characters, target, thresholds=scanner.thresholds)
        if as_json:
            click.echo(json.dumps(result.to_dict(scanner.characters if scanner else {}), ensure_ascii=False))
        else:
            _print_scan(result)
    sys.exit(EXIT_REFUSED if refused else 0)


@click.command()
@click.argument("negatives", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write (default: DATA_DIR/calibration.json).")
@click.option("--images", "images_only", is_flag=True,
              help="Fit only the image thresholds (gate screen-images): no rendering, no base model.")
@click.option("--image-negatives", multiple=True, type=click.Path(exists=True),
              help="Images that show no registered character (files, folders, zips; repeatable).")
def calibrate(negatives: tuple[str, ...], out: str | None, images_only: bool, image_negatives: tuple[str, ...]) -> None:
    """Fit matching thresholds from negatives: for LoRAs, base renders and known-clean LoRAs; for images
    (gate screen-images), images that show no registered character. Both, unless --images.

    With no NEGATIVES, the embedded default uses the fixture world's clean LoRAs (styles, concepts,
    original characters), and leaves held-back characters out of the registry it calibrates against; with no
    --image-negatives, the world's tuning images of generic scenes and unregistered originals.

    Example: gate calibrate clean/*.safetensors --image-negatives negatives/
    """
    from pathlib import Path

    settings = common.settings()
    db = common.record(settings)
    target = Path(out) if out else settings.data_dir / "calibration.json"
    if not images_only:
        _calibrate_loras(settings, db, [Path(p) for p in negatives], target)
    _calibrate_images(settings, db, list(image_negatives), target)
    click.echo(f"wrote {target}")


def _calibrate_loras(settings, db, paths: list, target) -> None:
    from gate.detection.calibration import calibrate as fit
    from gate.detection.calibration import negative_subjects, write_calibration
    from gate.registry.world import World

    scanner = common.scanner(settings, db, click.echo)
    excluded: set[str] = set()
    if not paths:
        world = World.load(settings.world_dir)
        paths = [world.path(lora["path"]) for lora in world.loras("style", "concept", "original")]
        excluded = world.held_back()
    references = scanner.references.without(excluded)
    subjects = negative_subjects(scanner, paths, references, progress=click.echo)
    thresholds = fit(subjects)
    write_calibration(target, thresholds, probe_set_id=scanner.engine.probe_set.id,
                      embedder_id=scanner.engine.embedder_id, negatives=[p.name for p in paths],
                      characters=list(references.character_ids))
    click.echo(json.dumps(thresholds.to_dict(), indent=2))


def _calibrate_images(settings, db, paths: list, target) -> None:
    from gate.images.bundle import read_bundle
    from gate.images.calibration import fit_image_thresholds, world_negatives, write_image_calibration
    from gate.images.screen import embed_images, image_references
    from gate.registry.characters import embed_missing

    paths = paths or world_negatives(settings.world_dir)
    bundle = read_bundle(paths)
    side = common.image_embedder(settings)
    embed_missing(db, side.references, side.reference_id)
    click.echo(f"embedding {len(bundle.items)} negative images ({len(bundle.refused)} refused)")
    thresholds = fit_image_thresholds(embed_images(bundle, side.images), image_references(db, side.reference_id),
                                      sorted({str(p) for p in paths}) if len(paths) < 20 else [f"{len(paths)} files"])
    write_image_calibration(target, thresholds, side.vectors_id)
    click.echo(json.dumps({"images": thresholds.to_dict()}, indent=2))
