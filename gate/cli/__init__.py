"""The `gate` command: a thin shell over the library. Heavy imports happen inside commands, so that
`gate inspect` starts in a fraction of a second and never loads torch."""

from __future__ import annotations

import json
import sys

import click

from gate.cli import catalogue as cli_catalogue
from gate.cli import common
from gate.cli.deliveries import deliveries
from gate.cli.people import audit_group, tokens, users
from gate.cli.repeat import repeat_group

EXIT_REFUSED = 3


class ConfigInvalid(click.ClickException):
    """A bad setting stops any command with exit 2 (click's usage status): the operator's to fix, not a crash."""

    exit_code = 2


class GateGroup(click.Group):
    """Converts the library's typed errors into CLI messages at the edge: no tracebacks for expected failures."""

    def invoke(self, ctx: click.Context):
        from gate.config import ConfigError
        from gate.errors import GateError

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigInvalid(exc.message) from None
        except GateError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}") from None


@click.group(cls=GateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lora-gate")
def main() -> None:
    """LoRA Gate: Content ID for LoRAs. Inspect, scan and gate LoRA uploads."""


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


@main.command()
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


def _print_scan(result, characters) -> None:
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


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file (JSON Lines).")
@click.option("--evidence", type=click.Path(file_okay=False), help="Write a contact sheet and HTML page here.")
def scan(paths: tuple[str, ...], as_json: bool, evidence: str | None) -> None:
    """Scan LoRA files: intake, name screening, probe renders, matching, verdict with reasons.

    Exit status 0 whatever the verdict, 3 when intake refused any file.

    Example: gate scan --evidence out/ my_lora.safetensors
    """
    from pathlib import Path

    settings = common.settings()
    db = common.record(settings)
    scanner = common.scanner(settings, db, None if as_json else click.echo)
    refused = False
    for path in paths:
        if as_json:
            result = scanner.scan(path)
        else:
            with click.progressbar(length=5, label=Path(path).name, show_eta=False) as bar:
                result = scanner.scan(path, progress=lambda stage: bar.update(1))
        refused |= not result.inspection.ok
        if evidence and result.decision:
            from gate.detection.evidence import write_evidence

            target = Path(evidence) / Path(path).stem if len(paths) > 1 else Path(evidence)
            write_evidence(result, scanner.characters, target)
        if as_json:
            click.echo(json.dumps(result.to_dict(scanner.characters), ensure_ascii=False))
        else:
            _print_scan(result, scanner.characters)
    sys.exit(EXIT_REFUSED if refused else 0)


@main.command()
@click.argument("negatives", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write (default: DATA_DIR/calibration.json).")
def calibrate(negatives: tuple[str, ...], out: str | None) -> None:
    """Fit matching thresholds from negatives: base renders and known-clean LoRAs.

    With no NEGATIVES, the embedded default uses the fixture world's clean LoRAs (styles, concepts,
    original characters), and leaves held-back characters out of the registry it calibrates against.

    Example: gate calibrate clean/*.safetensors
    """
    from pathlib import Path

    from gate.detection.calibration import calibrate as fit
    from gate.detection.calibration import negative_subjects, write_calibration
    from gate.registry.world import World

    settings = common.settings()
    db = common.record(settings)
    scanner = common.scanner(settings, db, click.echo)
    excluded: set[str] = set()
    paths = [Path(p) for p in negatives]
    if not paths:
        world = World.load(settings.world_dir)
        paths = [world.path(lora["path"]) for lora in world.loras("style", "concept", "original")]
        excluded = world.held_back()
    references = scanner.references.without(excluded)
    subjects = negative_subjects(scanner, paths, references, progress=click.echo)
    thresholds = fit(subjects)
    target = Path(out) if out else settings.data_dir / "calibration.json"
    write_calibration(target, thresholds, probe_set_id=scanner.engine.probe_set.id,
                      embedder_id=scanner.engine.embedder_id, negatives=[p.name for p in paths],
                      characters=list(references.character_ids))
    click.echo(json.dumps(thresholds.to_dict(), indent=2))
    click.echo(f"wrote {target}")


@main.group()
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
    from gate.registry.characters import add_character

    settings = common.settings()
    db = common.record(settings)
    character = add_character(
        db, settings.references_dir, name=name, rights_holder=rights_holder, policy=policy, references=references,
        aliases=aliases, description=description, character_id=character_id, embed=common.embed(settings),
        embedder_id=common.embedder_id(settings),
    )
    from gate.record import audit

    audit.record(db, common.actor(), "character.register", "character", character.id, "", None, character.to_dict())
    click.echo(f"registered {character.id}: {character.name} ({character.references} references, {policy})")
    cli_catalogue.screen_after_change(db, character.id, settings, "registered")  # the back catalogue, at once


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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--threads", default=8, show_default=True, type=int, help="Request threads.")
def serve(host: str, port: int, threads: int) -> None:
    """Run the web gate (hub webhooks, the JSON API, health and metrics) with a background scan worker.

    Example: GATE_UPLOAD_SECRET=s3cret gate serve --port 8000
    """
    import logging
    import signal

    from waitress import serve as run

    from gate.app import create_app
    from gate.pipeline.dispatch import dispatcher
    from gate.pipeline.embedded import WorkerProcess, use_worker_process

    common.settings().require_models()  # refuse now, not at the first upload (production without its models)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app()
    settings = app.config["GATE_SETTINGS"]
    if not settings.upload_secret:
        click.echo("warning: GATE_UPLOAD_SECRET is not set; POST /v1/uploads will answer 503", err=True)
    child = None
    if not settings.redis_url:  # the scans run in a supervised child process: torch stays out of this one
        child = WorkerProcess()
        child.start()
        use_worker_process(child)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the child on the way out, as on Ctrl-C
    dispatcher(settings)
    jobs = f"RQ on {settings.redis_url}" if settings.redis_url else f"a scan worker process ({child.process.pid})"
    click.echo(f"jobs: {jobs}")
    click.echo(f"LoRA Gate listening on http://{host}:{port} (data in {settings.data_dir})")
    try:
        run(app, host=host, port=port, threads=threads, ident="lora-gate")
    finally:
        if child is not None:
            child.stop()


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default="http://127.0.0.1:8000/v1/uploads", show_default=True, help="The gate's upload URL.")
@click.option("--secret", envvar="GATE_UPLOAD_SECRET", required=True, help="The hub's secret [GATE_UPLOAD_SECRET].")
@click.option("--meta", default=None, help="The hub's record of the upload, as JSON.")
def deliver(path: str, url: str, secret: str, meta: str | None) -> None:
    """Send a file to a gate as a hub would: signed multipart POST; prints the gate's answer.

    Example: gate deliver my_lora.safetensors --meta '{"model_id": "m1", "title": "My LoRA"}'
    """
    from gate.hubs.client import deliver as send

    try:
        record = json.loads(meta) if meta else None
    except ValueError:
        raise click.BadParameter("not valid JSON", param_hint="--meta") from None
    status, answer = send(url, path, secret, record)
    click.echo(json.dumps(answer, indent=1))
    sys.exit(0 if status == 202 else 1)


@main.group(name="blocklist")
def blocklist_group() -> None:
    """Tensor hashes of blocked LoRAs: re-uploads are blocked at intake, without rendering."""


@blocklist_group.command("add")
@click.argument("tensor_hash")
@click.option("--reason", required=True, help="Why it is blocked (kept with the entry).")
@click.option("--source", default="operator", show_default=True, help="On whose word.")
def blocklist_add(tensor_hash: str, reason: str, source: str) -> None:
    """Block a LoRA's tensor content (the tensor_hash `gate inspect` reports).

    Example: gate blocklist add 3f2a...e9 --reason "Ultraman LoRA, takedown 2026-11-02"
    """
    from gate.record import audit
    from gate.record.db import writing
    from gate.registry.blocklist import add

    db = common.record()
    with writing(db):
        add(db, tensor_hash, reason, source)
        audit.record(db, common.actor(), "blocklist.add", "tensor_hash", tensor_hash.strip().lower(), reason, None,
                     {"source": source})
    click.echo(f"blocked {tensor_hash}")


@blocklist_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def blocklist_list(as_json: bool) -> None:
    """List blocked tensor hashes.

    Example: gate blocklist list --json
    """
    from gate.registry.blocklist import entries

    found = entries(common.record())
    if as_json:
        click.echo(json.dumps(found, indent=1, ensure_ascii=False))
        return
    for entry in found:
        click.echo(f"{entry['tensor_hash']}  {entry['created_at']}  {entry['source']}: {entry['reason']}")


@main.command()
@click.option("--queues", "queue_names", default=None,
              help="Comma-separated queues to work, in priority order [default: all four, "
                   "intake,probe,catalogue,catalogue_probe; with --gpu: probe,catalogue_probe].")
@click.option("--gpu", is_flag=True, help="A rendering worker: preload the base model on CUDA, work the probe "
                                          "queues; it never opens the record.")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host and a random suffix).")
@click.option("--embedded", is_flag=True, hidden=True,
              help="The scan worker process `gate serve` starts without Redis: jobs as JSON lines on stdin.")
def worker(queue_names: str | None, gpu: bool, burst: bool, name: str | None, embedded: bool) -> None:
    """Run an RQ worker on Redis (REDIS_URL) for the gate's queues.

    The record's workers (intake, catalogue) never load torch; the probe queues' jobs render and embed.
    Example: REDIS_URL=redis://127.0.0.1:6379/0 gate worker --queues intake,catalogue
    """
    import dataclasses
    import logging

    from gate.pipeline.worker import run_worker
    from gate.queues import PROBE_QUEUES, QUEUES

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = common.settings()
    settings.require_models()  # refuse now, not at the first job (production without its models)
    if embedded:
        from gate.pipeline.dispatch import run_worker_child

        run_worker_child(settings)
        return
    if not settings.redis_url:
        raise click.UsageError("set REDIS_URL (or GATE_REDIS_URL): without Redis, `gate serve` runs its own worker")
    default = ",".join(PROBE_QUEUES if gpu else QUEUES)
    names = [q.strip() for q in (queue_names or default).split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(QUEUES)}",
                                 param_hint="--queues")
    if gpu and not settings.device:
        settings = dataclasses.replace(settings, device="cuda")
    run_worker(settings, names, burst=burst, name=name, gpu=gpu)


@main.command()
@click.argument("upload_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(upload_id: str | None, as_json: bool) -> None:
    """Show one upload's state, verdict and journal; without an id, the queues and the record at a glance.

    Example: gate status 01JD3W5K8Z0M6S1Q9V4T2R7XBC
    """
    from gate.pipeline.status import overview, upload_report

    settings = common.settings()
    db = common.record(settings)
    report = upload_report(db, upload_id) if upload_id else overview(settings, db)
    if as_json:
        click.echo(json.dumps(report, indent=1, ensure_ascii=False))
        return
    for key, value in report.items():
        if isinstance(value, list):
            click.echo(f"{key}:")
            for item in value:
                click.echo(f"  {item}")
        else:
            click.echo(f"{key}: {value}")


@main.group(name="db")
def db_group() -> None:
    """The record (SQLite): schema migrations."""


@db_group.command("migrate")
def db_migrate() -> None:
    """Bring the record's schema up to date (also done on every start); prints the migrations applied.

    Example: GATE_DATA_DIR=/srv/gate gate db migrate
    """
    from gate.record.db import open_db

    settings = common.settings()
    applied = [row["name"] for row in open_db(settings.db_path)["_sqlite_migrations"].rows_where(order_by="id")]
    click.echo(f"{settings.db_path}: {len(applied)} migrations applied, latest {applied[-1]}")


main.add_command(repeat_group)

characters.add_command(cli_catalogue.characters_update)
characters.add_command(cli_catalogue.characters_refs)
characters.add_command(cli_catalogue.characters_reports)
main.add_command(cli_catalogue.catalogue_group)
main.add_command(cli_catalogue.rescan)
main.add_command(users)
main.add_command(tokens)
main.add_command(audit_group)
main.add_command(deliveries)
