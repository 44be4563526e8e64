"""`gate repeat`: repeat infringement from the command line, a thin shell over gate.repeat.screen and
gate.repeat.weightprint."""

from __future__ import annotations

import json

import click

from gate.cli import common


@click.group(name="repeat")
def repeat_group() -> None:
    """Repeat infringement: weight fingerprints of LoRAs and uploaders' histories."""


@repeat_group.command("match")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def repeat_match(path: str, as_json: bool) -> None:
    """Look a LoRA's weight fingerprint up among the blocked and quarantined LoRAs in the record (no rendering).

    Example: gate repeat match reupload.safetensors --json
    """
    from gate.errors import GateError
    from gate.intake import inspect_file
    from gate.repeat.screen import RepeatScreen, fingerprint_inspected

    settings = common.settings()
    db = common.record(settings)
    inspection = inspect_file(path, settings.intake)
    if not inspection.ok:
        raise inspection.error
    try:
        print_ = fingerprint_inspected(inspection, settings.intake)
    except OSError as exc:
        raise GateError(f"cannot read {path}: {exc}", "file_unreadable") from None
    matches = RepeatScreen(settings, db).find(print_)
    if as_json:
        click.echo(json.dumps({"path": path, "tensor_hash": inspection.fingerprints.tensor_hash,
                               "modules": len(print_.modules), "skipped_modules": len(print_.skipped),
                               "matches": [m.to_dict() | {"character": m.character_id} for m in matches]}))
        return
    if not matches:
        click.echo(f"{path}: no blocked or quarantined LoRA has these weights")
    for match in matches:
        source = f"upload {match.upload_id}" if match.upload_id else "a blocklist entry"
        click.echo(f"{path}: {match.kind} of {source} ({match.verdict}, {match.tensor_hash[:16]}…): similarity "
                   f"{match.similarity:.3f}, containment {match.containment:.3f}")


@repeat_group.command("compare")
@click.argument("first", type=click.Path(dir_okay=False))
@click.argument("second", type=click.Path(dir_okay=False))
def repeat_compare(first: str, second: str) -> None:
    """Compare two LoRA files' weight changes: similarity, and how much of SECOND is contained in FIRST.

    Example: gate repeat compare merged.safetensors ultraman.safetensors
    """
    from gate.repeat.weightprint import compare, fingerprint_file

    scores = compare(fingerprint_file(first), fingerprint_file(second))
    click.echo(json.dumps({"similarity": round(scores.similarity, 4), "containment": round(scores.containment, 4),
                           "modules_shared": scores.modules_shared}))


@repeat_group.command("history")
@click.argument("uploader")
@click.option("--hub", default=None, help="The hub the uploader is on (default: uploads with no hub).")
@click.option("--limit", default=10, show_default=True, help="How many recent uploads to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def repeat_history(uploader: str, hub: str | None, limit: int, as_json: bool) -> None:
    """An uploader's record: uploads, blocks, quarantines, and the most recent uploads.

    Example: gate repeat history mallory --hub huggingface
    """
    from gate.repeat.screen import uploader_history

    settings = common.settings()
    db = common.record(settings)
    history = uploader_history(db, hub, uploader, limit, settings.repeat.offender_blocks)
    if as_json:
        click.echo(json.dumps(history, ensure_ascii=False))
        return
    flag = "  REPEAT OFFENDER" if history["repeat_offender"] else ""
    click.echo(f"{uploader} on {hub or '(no hub)'}: {history['uploads']} uploads, {history['blocked']} blocked, "
               f"{history['quarantined']} quarantined, {history['allowed']} allowed, "
               f"{history['refused']} refused{flag}")
    for item in history["recent"]:
        click.echo(f"  {item['created_at']}  {item['id']}  {item['verdict'] or item['state']:<10}  "
                   f"{item['title'] or ''}  {','.join(k for k in item['reasons'] if k)}")
