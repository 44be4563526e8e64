"""Opening the record from settings, the same way in every process (the web gate, workers, the CLI)."""

from __future__ import annotations

import threading

from gate.config import Settings


def open_record(settings: Settings):
    """The record; in the demo profile, its registry seeded from the fixture world when empty."""
    from gate.record.db import open_db
    from gate.registry.world import World, WorldMissing, seed_registry

    db = open_db(settings.db_path, settings.record_sync)
    if settings.demo:  # a production gate registers only the characters its operators add
        try:
            seed_registry(db, World.load(settings.world_dir), settings.references_dir)
        except WorldMissing:
            pass
    return db


# Per thread: sqlite connections may not cross threads (a job thread, a housekeeping thread).
_local = threading.local()


def thread_record(settings: Settings):
    """This thread's connection to the record (opened once per thread and database)."""
    connections = _local.__dict__.setdefault("db", {})
    key = str(settings.db_path)
    if key not in connections:
        connections[key] = open_record(settings)
    return connections[key]
