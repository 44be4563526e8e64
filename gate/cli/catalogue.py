"""`gate catalogue` and `gate rescan`: onboarding a hub's existing catalogue, screening it for a character,
and re-rendering it with a new probe set. A thin shell over gate.catalogue."""

from __future__ import annotations

import json
import sys

import click

from gate.cli import common


@click.group("catalogue")
def catalogue_group() -> None:
    """The back catalogue: onboarding a hub's existing LoRAs, screening it for a character."""


@catalogue_group.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.option("--hub", default=None, help="The hub the entries come from (when the manifest does not say).")
@click.option("--no-scan", is_flag=True, help="Record the entries only; scan them later.")
@click.option("--json", "as_json", is_flag=True, help="Print the import's report as JSON.")
def catalogue_import(source: str, hub: str | None, no_scan: bool, as_json: bool) -> None:
    """Import a directory of .safetensors files, or a JSONL/CSV manifest of entries (`path` or `url`, plus the
    hub's record: hub, model_id, version_id, uploader, title, tags, description, trigger_words). Each becomes an
    upload (source "import") scanned on the low-priority catalogue queue; importing again adds nothing.

    Example: gate catalogue import hub-export.jsonl --hub civitai
    """
    from pathlib import Path

    from gate.catalogue.onboarding import import_catalogue, queue_scans, scan_here, to_scan

    settings = common.settings()
    db = common.record(settings)
    report = import_catalogue(settings, db, Path(source), hub)
    waiting = [] if no_scan else to_scan(db, report)
    if waiting and settings.redis_url:
        queue_scans(settings, waiting)
    elif waiting:
        with click.progressbar(length=len(waiting), label="scanning imported LoRAs", show_eta=True,
                               file=sys.stderr) as bar:
            scan_here(settings, waiting, tick=lambda: bar.update(1))
    summary = report.to_dict()
    for item in summary["items"]:
        if item.get("upload_id"):
            row = db["uploads"].get(item["upload_id"])
            item.update(state=row["state"], verdict=row["verdict"])
    summary["queued"] = len(waiting) if settings.redis_url else 0
    if as_json:
        click.echo(json.dumps(summary, indent=1, ensure_ascii=False))
    else:
        for item in summary["items"]:
            if "error" in item:
                click.echo(f"{item['where']}: {click.style('error', fg='red')} {item['error']['code']}: "
                           f"{item['error']['message']}")
            else:
                click.echo(f"{item['where']}: {item['upload_id']} {'new' if item['created'] else 'already imported'}"
                           f", {item['state']}{' ' + item['verdict'] if item.get('verdict') else ''}")
        click.echo(f"{summary['entries']} entries: {summary['created']} new, {summary['already_imported']} already "
                   f"imported, {summary['errors']} errors" + (f"; {summary['queued']} scans queued on the catalogue "
                                                             "queue" if summary["queued"] else ""))
    if summary["errors"]:
        sys.exit(3)


@catalogue_group.command("screen")
@click.argument("character_id")
@click.option("--likelihood", is_flag=True,
              help="Also load every scanned LoRA again and measure the character's references with the likelihood "
                   "probe (the base model, here; no rendering).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def catalogue_screen(character_id: str, likelihood: bool, as_json: bool) -> None:
    """Screen the stored embeddings of every scanned LoRA for one character now (no rendering).

    Example: gate catalogue screen ultraman --likelihood
    """
    from gate.catalogue.screening import likelihood_screen, registry_changed

    settings = common.settings()
    db = common.record(settings)
    common.echo_screening(registry_changed(db, character_id, settings, cause="manual", embed=common.embed(settings)),
                   as_json)
    if likelihood:  # measured here, with this process's engine
        common.echo_screening(likelihood_screen(db, character_id, settings, cause="manual",
                                         scanner=common.scanner(settings, db)), as_json)


@catalogue_group.command("resume")
@click.argument("screening_id", type=int)
@click.option("--queue", "use_queue", is_flag=True,
              help="Queue the uploads left for the catalogue workers (Redis) rather than judging them here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def catalogue_resume(screening_id: int, use_queue: bool, as_json: bool) -> None:
    """Carry on a likelihood screening whose jobs were lost: only its uploads not yet judged.

    Example: gate catalogue resume 12 --queue
    """
    from gate.catalogue.screening import likelihood_resume

    settings = common.settings()
    db = common.record(settings)
    queues = None
    if use_queue:
        if not settings.redis_url:
            raise click.ClickException("--queue needs Redis (REDIS_URL); leave --queue out to judge the uploads here")
        from gate.queues import RedisQueues

        queues = RedisQueues(settings.redis_url, settings.job_timeout)
    screening = likelihood_resume(db, screening_id, settings, queues=queues,
                                  scanner=None if queues is not None else common.scanner(settings, db))
    if queues is not None and not as_json:
        click.echo(f"screening {screening_id}: {screening.screened} uploads queued again (the rest are done or "
                   "still on their way)")
        return
    common.echo_screening(screening, as_json)


@click.command("rescan")
@click.option("--since", default=None, help="Uploads received on or after this date (ISO, e.g. 2026-01-01).")
@click.option("--until", default=None, help="Uploads received before this date.")
@click.option("--hub", "hubs", multiple=True, help="Only uploads from this hub (repeatable).")
@click.option("--family", "families", multiple=True, help="Only LoRAs for this base family (repeatable).")
@click.option("--verdict", "verdicts", multiple=True, type=click.Choice(["allow", "quarantine", "block"]),
              help="Only uploads with this earlier verdict (repeatable).")
@click.option("--character", "characters", multiple=True, help="Only uploads matched or named as this character.")
@click.option("--all", "include_current", is_flag=True,
              help="Also uploads already scanned with the current probe set.")
@click.option("--limit", type=int, default=None, help="At most this many uploads.")
@click.option("--rate", default=None, help="At most N uploads a minute, written N/min (also N/s, N/h).")
@click.option("--resume", "resume", default=None, metavar="RUN", help="Carry on an interrupted run.")
@click.option("--report", "report_run", default=None, metavar="RUN", help="Print a run's report and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def rescan(since, until, hubs, families, verdicts, characters, include_current, limit, rate, resume, report_run,
           as_json) -> None:
    """Re-render the back catalogue (or a filtered part) with the current probe set, on the low-priority
    catalogue queue, rate-limited, with progress; ends with what changed. Resumable: --resume RUN.

    Without Redis the uploads are rescanned in this process.

    Example: gate rescan --since 2025-01-01 --hub civitai --verdict allow --rate 30/min
    """
    from gate.catalogue.rescan import Filters, create_run, drive, get_run, parse_instant, parse_rate, report
    from gate.catalogue.screening import current_embedder

    settings = common.settings()
    db = common.record(settings)
    if report_run:
        _echo_rescan_report(report(db, report_run), as_json)
        return
    rate_per_min = parse_rate(rate)
    since, until = parse_instant(since, "--since"), parse_instant(until, "--until")
    if resume:
        run = get_run(db, resume)
    else:
        run = create_run(db, Filters(since, until, hubs, families, verdicts, characters, include_current, limit),
                         current_embedder(settings)[1], rate_per_min)
    click.echo(f"rescan {run['id']}: {run['total']} uploads with {run['probe_set']}"
               f"{' (resumed)' if resume else ''}; resume with --resume {run['id']}", err=True)
    with click.progressbar(length=run["total"], label=f"rescan {run['id']}", show_eta=True, show_pos=True,
                           file=sys.stderr) as bar:
        def tick(done: int) -> None:
            bar.update(done - bar.pos)

        result = drive(settings, db, run["id"], tick, rate_per_min)
    _echo_rescan_report(result, as_json)


def _echo_rescan_report(result: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=1, ensure_ascii=False))
        return
    tally = result["counts"]
    click.echo(f"rescan {result['run']} {result['state']}: {tally['done']} rescanned, {tally['failed']} failed, "
               f"{tally['skipped']} skipped, of {result['total']}")
    for change, count in sorted(result["transitions"].items()):
        click.echo(f"  {change}: {count}")
    for item in result["changed"]:
        click.echo(f"  changed {item['upload_id']}: {item['before']} -> {item['after']}")
    for item in result["not_rescanned"]:
        click.echo(f"  {item['state']} {item['upload_id']}: {item['error']}")
