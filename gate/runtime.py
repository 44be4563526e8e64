"""Assembling the running parts from settings: the record and the scanner. Shared by the CLI and the
service's worker, so both load the same things the same way."""

from __future__ import annotations

from collections.abc import Callable

from gate.config import Settings


def open_record(settings: Settings):
    """The record; in the demo profile, its registry seeded from the fixture world when empty."""
    from gate.db import open_db
    from gate.world import World, WorldMissing, seed_registry

    db = open_db(settings.db_path, settings.record_sync)
    if settings.demo:  # a production gate registers only the characters its operators add
        try:
            seed_registry(db, World.load(settings.world_dir), settings.references_dir)
        except WorldMissing:
            pass
    return db


def load_scanner(settings: Settings, db, echo: Callable[[str], None] | None = None):
    """Load the probe engine (base model, embedder) once; the slow part of a scan's start."""
    settings.require_models()  # a clear ConfigError before the slow imports
    from gate.scan import Scanner
    from probes.engine import ProbeEngine
    from probes.probe_set import load_probe_set

    if echo:
        echo(f"loading base model {settings.base_model} and embedder {settings.embedder} ...")
    engine = ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set), settings.device,
                         cache_dir=settings.base_render_cache)
    return Scanner(settings, db, engine)


def load_matcher(settings: Settings, db):
    """A scanner that screens, matches and decides but does not render: the CPU worker's side of a scan.

    Needs only the embedder; `settings.embedder` refuses a production configuration that names none."""
    from gate.scan import Scanner
    from probes.engine import EmbeddingEngine
    from probes.probe_set import load_probe_set

    return Scanner(settings, db, EmbeddingEngine(settings.embedder, load_probe_set(settings.probe_set),
                                                 settings.device))
