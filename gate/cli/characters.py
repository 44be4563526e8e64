"""`gate characters`: the registry of characters rights holders protect. Registering or changing one
embeds its new references (the embedder alone, loaded only then) and screens the back catalogue for it."""

from __future__ import annotations

import json

import click

from gate.cli import common


@click.group()
def characters() -> None:
    """The registry of characters rights holders protect."""


@characters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "include_retired", is_flag=True, help="Include retired characters.")
def characters_list(as_json: bool, include_retired: bool) -> None:
    """List registered characters.

    Example: gate characters list --json
    """
    from gate.registry.characters import list_characters

    found = list_characters(common.record(), include_retired)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in found], ensure_ascii=False, indent=1))
        return
    for c in found:
        click.echo(f"{c.id:<16} {c.name:<22} {c.policy:<10} {c.references:>3} refs  {c.rights_holder}"
                   f"{'' if c.status == 'active' else '  (retired)'}")


@characters.command("show")
@click.argument("character_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def characters_show(character_id: str, as_json: bool) -> None:
    """Show one character.

    Example: gate characters show ultraman
    """
    from gate.registry.characters import get_character

    character = get_character(common.record(), character_id)
    if as_json:
        click.echo(json.dumps(character.to_dict(), ensure_ascii=False, indent=1))
        return
    for key, value in character.to_dict().items():
        click.echo(f"{key:<14} {', '.join(value) if isinstance(value, list) else value}")


@characters.command("add")
@click.argument("name")
@click.option("--rights-holder", required=True, help="Who owns the character.")
@click.option("--policy", type=click.Choice(["block", "quarantine"]), default="quarantine", show_default=True,
              help="What a clear match does.")
@click.option("--alias", "aliases", multiple=True, help="Another name, in any script (repeatable).")
@click.option("--ref", "references", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="A reference image, PNG/JPEG/WebP (repeatable).")
@click.option("--id", "character_id", help="Stable id (default: from the name).")
@click.option("--description", default="", help="A sentence about the design.")
def characters_add(name, rights_holder, policy, aliases, references, character_id, description) -> None:
    """Register a character with reference images; they are validated and embedded on arrival.

    Example: gate characters add Ultraman --rights-holder Tsuburaya --policy block --alias 奥特曼 --ref ref1.png
    """
    from gate.record import audit
    from gate.record.db import writing
    from gate.registry.characters import add_character, embed_missing

    settings = common.settings()
    db = common.record(settings)
    with writing(db):  # the registration and its audit entry: one transaction
        character = add_character(
            db, settings.references_dir, name=name, rights_holder=rights_holder, policy=policy,
            references=references, aliases=aliases, description=description, character_id=character_id)
        audit.record(db, common.actor(), "character.register", "character", character.id, "", None,
                     character.to_dict())
    embed_missing(db, common.embed(settings), common.embedder_id(settings))  # after: loading it takes no lock
    click.echo(f"registered {character.id}: {character.name} ({character.references} references, {policy})")
    common.screen_after_change(db, character.id, settings, "registered")  # the back catalogue, at once


@characters.command("retire")
@click.argument("character_id")
def characters_retire(character_id: str) -> None:
    """Retire a character: it is no longer matched; its record stays.

    Example: gate characters retire ultraman
    """
    from gate.record import audit
    from gate.record.db import writing
    from gate.registry.characters import get_character, retire_character

    db = common.record()
    with writing(db):
        before = get_character(db, character_id)
        character = retire_character(db, character_id)
        audit.record(db, common.actor(), "character.retire", "character", character_id, "", before.to_dict(),
                     character.to_dict())
    click.echo(f"retired {character.id}")


@characters.command("update")
@click.argument("character_id")
@click.option("--name", default=None, help="A new name.")
@click.option("--alias", "aliases", multiple=True, help="Replace the aliases with these (repeatable).")
@click.option("--add-alias", "add_aliases", multiple=True, help="Add an alias, keeping the others (repeatable).")
@click.option("--policy", type=click.Choice(["block", "quarantine"]), default=None, help="What a clear match does.")
@click.option("--rights-holder", default=None, help="Who owns the character.")
@click.option("--description", default=None, help="A sentence about the design.")
@click.option("--ref", "add_references", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Add a reference image, PNG/JPEG/WebP (repeatable).")
@click.option("--remove-ref", "remove_references", multiple=True,
              help="Remove a reference by its sha256 (8 or more leading hex digits; see `gate characters refs`).")
@click.option("--no-screen", is_flag=True, help="Do not screen the back catalogue after the change.")
@click.option("--json", "as_json", is_flag=True, help="Print the screening as JSON.")
def characters_update(character_id, name, aliases, add_aliases, policy, rights_holder, description, add_references,
                      remove_references, no_screen, as_json) -> None:
    """Change a character (names, policy, references); then the back catalogue is screened for it.

    New references are validated and embedded on arrival; at least one must remain.

    Example: gate characters update ultraman --add-alias ウルトラマン --policy block --ref new_ref.png
    """
    from gate.record import audit
    from gate.record.db import writing
    from gate.registry.characters import embed_missing, get_character, update_character

    settings = common.settings()
    db = common.record(settings)
    embed = common.embed(settings)  # the embedder loads only if a reference needs it
    with writing(db):  # the change and its audit entry: one transaction
        before = get_character(db, character_id)
        character = update_character(
            db, settings.references_dir, character_id, name=name, aliases=list(aliases) if aliases else None,
            add_aliases=add_aliases, policy=policy, rights_holder=rights_holder, description=description,
            add_references=add_references, remove_references=remove_references)
        audit.record(db, common.actor(), "policy.change" if character.policy != before.policy else
                     "character.update", "character", character_id, "", before.to_dict(), character.to_dict())
    embed_missing(db, embed, common.embedder_id(settings))
    if not as_json:
        click.echo(f"updated {character.id}: {character.name} ({character.references} references, {character.policy})")
    if not no_screen:
        common.screen_after_change(db, character.id, settings, "updated", embed, as_json)


@characters.command("refs")
@click.argument("character_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def characters_refs(character_id: str, as_json: bool) -> None:
    """List a character's reference images (sha256, size, where kept).

    Example: gate characters refs ultraman
    """
    from gate.registry.characters import reference_rows

    rows = reference_rows(common.record(), character_id)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo(f"{row['sha256'][:16]}  {row['width']}x{row['height']}  {row['path']}")


@characters.command("reports")
@click.argument("character_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=10, show_default=True, help="Most recent screenings to show.")
def characters_reports(character_id: str, as_json: bool, limit: int) -> None:
    """The rights holder's report: each back-catalogue screening for the character and the uploads that show it.

    Example: gate characters reports ultraman --json
    """
    from gate.catalogue.screening import character_reports

    reports = character_reports(common.record(), character_id, limit)
    if as_json:
        click.echo(json.dumps(reports, indent=1, ensure_ascii=False))
        return
    if not reports:
        click.echo(f"{character_id}: not screened yet")
    for report in reports:
        click.echo(f"screening {report['screening']} ({report['cause']}, {report['at']}): {report['screened']:,} "
                   f"stored LoRAs, {len(report['hits'])} show {character_id}, {report['changed']} changed, "
                   f"{report['seconds']:.2f} s")
        for hit in report["hits"]:
            where = " / ".join(str(v) for v in (hit["hub"], hit["model_id"], hit["version_id"]) if v)
            click.echo(f"  {hit['upload_id']}  {where or hit['filename']}  {hit['verdict_before']} -> "
                       f"{hit['verdict_after']}  {hit['certainty']}: {hit['matched']}/{hit['rendered']} renders, "
                       f"best {hit['best_score']:.3f}")
