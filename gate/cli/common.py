"""What every command group shares: the settings, the record, the scanner and who acts, loaded one way."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable

import click

from gate.config import Settings, load_settings
from gate.record.audit import Actor
from gate.runtime import open_record


def settings() -> Settings:
    """The configuration, loaded (and validated) once per command."""
    return load_settings()


def record(config: Settings | None = None):
    """The record, opened as every process opens it (migrations applied, the demo world seeded)."""
    return open_record(config or settings())


def actor() -> Actor:
    """Who acts from the command line, for the audit log: the operating-system user, as an operator."""
    return Actor(f"cli:{getpass.getuser()}", "operator")


def embed(config: Settings):
    """The embedder alone, loaded on first use (a character's references with no vector yet)."""
    from gate.engines import lazy_embedder  # torch, only if a reference needs embedding

    return lazy_embedder(config)


def image_embedder(config: Settings):
    """The image embedder (for screening images), loaded on first use."""
    from gate.engines import LazyImageEmbedder  # torch, only when an image needs embedding

    return LazyImageEmbedder(config)


def embedder_id(config: Settings) -> str:
    from probes.contract import embedder_id as identify

    return identify(config.embedder)


def scanner(config: Settings, db, echo: Callable[[str], None] | None = None):
    """The probe engine in this process (base model and embedder): for `gate scan` and `gate calibrate`."""
    from gate.engines import load_scanner  # torch: only the commands that render load it

    return load_scanner(config, db, echo)


def echo_screening(screening, as_json: bool = False) -> None:
    """Print what screening the back catalogue for a character found."""
    if as_json:
        click.echo(json.dumps({"screening": screening.id, "character": screening.character_id,
                               "screened": screening.screened, "renders": screening.renders,
                               "candidates": screening.candidates, "hits": [h.__dict__ for h in screening.hits],
                               "changed": screening.changed, "seconds": round(screening.seconds, 4)},
                              ensure_ascii=False))
        return
    if screening.id is None:
        click.echo(f"{screening.character_id}: nothing screened ({screening.skipped})")
        return
    click.echo(screening.summary())


def screen_after_change(db, character_id: str, settings, cause: str, embed=None, as_json: bool = False) -> None:
    """Screen the back catalogue for a character just registered or changed; the change itself stands even when
    screening cannot run (no calibration for these models, say), and the operator is told why."""
    from gate.catalogue.screening import registry_changed
    from gate.errors import GateError

    try:
        screening = registry_changed(db, character_id, settings, cause=cause, embed=embed)
    except GateError as exc:
        click.echo(f"the back catalogue was not screened for {character_id}: {exc.code}: {exc.message}; "
                   f"run `gate catalogue screen {character_id}` once that is fixed", err=True)
        return
    echo_screening(screening, as_json)
