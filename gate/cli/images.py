"""`gate screen-images`: screen image files, folders and zips (a training set, previews, generated images)
against the registered characters, with this process's embedder."""

from __future__ import annotations

import json
import sys

import click

from gate.cli import common

EXIT_REFUSED = 3


@click.command("screen-images")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the set's answer as JSON.")
@click.option("--evidence", type=click.Path(file_okay=False), help="Write the evidence page and images here.")
def screen_images(paths: tuple[str, ...], as_json: bool, evidence: str | None) -> None:
    """Screen images as one set: each is validated, embedded and matched against every registered character;
    the set gets a verdict under the characters' policies, with reasons. Captions (captions.jsonl or a .txt
    beside an image) are screened for registered names.

    Exit status 0 whatever the verdict, 3 when any file was refused (the rest are still judged).

    Example: gate screen-images training_set.zip --evidence out/
    """
    from pathlib import Path

    from gate.images.bundle import BundleError, read_bundle
    from gate.images.screen import load_image_thresholds
    from gate.images.screen import screen_images as screen

    settings = common.settings()
    try:
        bundle = read_bundle(list(paths))  # every file checked before a model loads
    except BundleError as exc:  # an archive refused whole: its author meant harm
        error = {"code": exc.code, "message": exc.message}
        click.echo(json.dumps({"verdict": None, "error": error}) if as_json
                   else f"{click.style('REFUSED', fg='red', bold=True)}: {exc.code}: {exc.message}")
        sys.exit(EXIT_REFUSED)
    side = common.image_embedder(settings)
    thresholds = load_image_thresholds(settings.calibration_file, side.vectors_id)
    screened = screen(bundle, side, common.record(settings), thresholds)
    answer = screened.to_dict()
    if evidence:
        from gate.images.evidence import write_image_evidence

        title = Path(paths[0]).name if len(paths) == 1 else f"{len(paths)} paths"
        answer["evidence"] = str(write_image_evidence(screened, evidence, title))
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False))
    else:
        _print(answer)
    sys.exit(EXIT_REFUSED if bundle.refused else 0)


def _print(answer: dict) -> None:
    colour = {"allow": "green", "quarantine": "yellow", "block": "red"}[answer["verdict"]]
    counts = answer["counts"]
    click.echo(f"{click.style(answer['verdict'].upper(), fg=colour, bold=True)}: {counts['images']} images, "
               f"{counts['matched']} resemble a registered character, {counts['refused']} refused")
    for reason in answer["reasons"]:
        click.echo(f"  - {reason['message']}")
    for image in answer["images"]:
        if image["matched"]:
            m = image["matched"]
            click.echo(f"  {image['name']}: {m['name']} {m['score']:.3f}{' strong' if m['strong'] else ''} "
                       f"(closest reference {m['reference']})")
    for refused in answer["refused"]:
        click.echo(f"  refused {refused['name']}: {refused['code']}: {refused['message']}")
    if "evidence" in answer:
        click.echo(f"  evidence: {answer['evidence']}")


@click.group("datasets")
def datasets() -> None:
    """Image sets hubs sent (POST /v1/datasets and /v1/images)."""


@datasets.command("status")
@click.argument("set_id")
@click.option("--json", "as_json", is_flag=True, help="Print the answer the status API gives, as JSON.")
def dataset_status(set_id: str, as_json: bool) -> None:
    """Show one image set's state, verdict, reasons and matching images.

    Example: gate datasets status is_4a693f50514e657d
    """
    from gate.images.record import get_set, set_status

    db = common.record()
    answer = set_status(db, get_set(db, set_id))
    if as_json:
        click.echo(json.dumps(answer, indent=1, ensure_ascii=False))
        return
    counts = answer["counts"]
    click.echo(f"{set_id} ({answer['kind']}): {answer['state']}"
               + (f", verdict {answer['verdict']}" if answer["verdict"] else "")
               + f"; {counts['images']} images, {counts['matched']} matched, {counts['refused']} refused")
    if error := answer.get("error"):
        click.echo(f"  {error['code']}: {error['message']}")
    for reason in answer["reasons"]:
        click.echo(f"  - {reason['message']}")
    for match in answer.get("matches", []):
        click.echo(f"  {match['name']}: {match['character']} {match['score']:.3f}"
                   f"{' strong' if match['strong'] else ''}")
