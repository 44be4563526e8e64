"""What every command group shares: the settings, the record, the scanner and who acts, loaded one way."""

from __future__ import annotations

import getpass
from collections.abc import Callable

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


def embedder_id(config: Settings) -> str:
    from probes.contract import embedder_id as identify

    return identify(config.embedder)


def scanner(config: Settings, db, echo: Callable[[str], None] | None = None):
    """The probe engine in this process (base model and embedder): for `gate scan` and `gate calibrate`."""
    from gate.engines import load_scanner  # torch: only the commands that render load it

    return load_scanner(config, db, echo)
