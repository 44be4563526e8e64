"""Running the service: `gate serve` (the web gate), `gate worker`, `gate deliver` (a hub's upload, for
trying it), `gate status` and `gate db`."""

from __future__ import annotations

import json
import sys

import click

from gate.cli import common


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--threads", default=8, show_default=True, type=int, help="Request threads.")
def serve(host: str, port: int, threads: int) -> None:
    """Run the web gate (hub webhooks, the JSON API, health and metrics) with a background scan worker.

    Example: GATE_UPLOAD_SECRET=s3cret gate serve --port 8000
    """
    import logging

    from gate.app import create_app
    from gate.pipeline.dispatch import dispatcher
    from gate.pipeline.embedded import WorkerProcess, use_worker_process
    from gate.web.server import serve as run

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
    dispatcher(settings)
    jobs = f"RQ on {settings.redis_url}" if settings.redis_url else f"a scan worker process ({child.process.pid})"
    click.echo(f"jobs: {jobs}")
    click.echo(f"LoRA Gate listening on http://{host}:{port} (data in {settings.data_dir})")
    try:
        run(app, host, port, threads)
    finally:
        if child is not None:
            child.stop()


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--url", default="http://127.0.0.1:8000/v1/uploads", show_default=True, help="The gate's upload URL.")
@click.option("--secret", envvar="GATE_UPLOAD_SECRET", required=True, help="The hub's secret [GATE_UPLOAD_SECRET].")
@click.option("--meta", default=None, help="The hub's record of the upload, as JSON.")
@click.option("--preview", "previews", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A preview image sent with the upload (repeatable, at most 8).")
def deliver(path: str, url: str, secret: str, meta: str | None, previews: tuple[str, ...]) -> None:
    """Send a file to a gate as a hub would: signed multipart POST; prints the gate's answer.

    Example: gate deliver my_lora.safetensors --meta '{"model_id": "m1", "title": "My LoRA"}'
    """
    import http.client

    from gate.hubs.client import deliver as send

    try:
        record = json.loads(meta) if meta else None
    except ValueError:
        raise click.BadParameter("not valid JSON", param_hint="--meta") from None
    try:
        status, answer = send(url, path, secret, record, previews=list(previews))
    except (OSError, http.client.HTTPException) as exc:  # refused, unresolvable, timed out: no gate there
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"could not reach the gate at {url}: {reason} (is `gate serve` running?)") from None
    except ValueError:
        raise click.ClickException(f"{url} did not answer with JSON: is it a LoRA Gate's upload URL?") from None
    click.echo(json.dumps(answer, indent=1))
    sys.exit(0 if status in (200, 202) else 1)


@click.command()
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


@click.command()
@click.argument("upload_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(upload_id: str | None, as_json: bool) -> None:
    """Show one upload's state, verdict and journal; without an id, the queues and the record at a glance.

    Example: gate status up_4a693f50514e657d
    """
    from gate.pipeline.status import overview, report_lines, upload_report
    from gate.queues import RedisQueues

    settings = common.settings()
    db = common.record(settings)
    if upload_id:
        report = upload_report(db, upload_id, RedisQueues(settings.redis_url) if settings.redis_url else None)
        click.echo(json.dumps(report, indent=1, ensure_ascii=False) if as_json else "\n".join(report_lines(report)))
        return
    report = overview(settings, db)
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


@click.group(name="db")
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
