"""Decisions feed back into the real scan: a blocked LoRA's re-upload (edited metadata or not) is caught at
screening, without rendering; an allowed false positive's characters are what the scan's decision clears."""

from __future__ import annotations

import shutil

import pytest

from fixtures.review_queue import replicate
from gate.record.audit import Actor
from gate.review import queue as review
from tests.gate.review.conftest import LORAS

MOD = Actor("mod", "moderator")


@pytest.fixture
def scanner(engine, world, tmp_path):
    """A scanner on a record of its own: the decisions below must not reach the scan tests' shared record."""
    from gate.config import load_settings
    from gate.detection.scanner import Scanner
    from gate.record.db import open_db
    from gate.registry.world import seed_registry

    settings = load_settings({"data_dir": str(tmp_path / "data")})
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    return Scanner(settings, db, engine)


def test_decisions_reach_the_scanner(scanner, scanned, tmp_path):
    db = scanner.db
    ultraman, pikachu = scanned
    first, second = (replicate(db, None, [scan], 1, seed=seed)[0] for scan, seed in ((ultraman, 91), (pikachu, 92)))
    lora = LORAS / ultraman[0]["filename"]
    copy = tmp_path / "renamed_upload.safetensors"  # another name: the tensor hash, not the name, is what counts
    shutil.copy(lora, copy)
    assert not scanner.screen(copy).blocklisted
    review.decide(db, MOD, first, "block", "the character in every render")
    screened = scanner.screen(copy)
    assert screened.blocklisted and "the character in every render" in screened.blocklisted
    scanner.conclude(screened)  # no renders: the blocklist decides
    assert screened.verdict == "block" and screened.outcome is None

    other = scanner.screen(LORAS / pikachu[0]["filename"])
    assert scanner._cleared(other) == set()
    review.decide(db, MOD, second, "allow", "an original mascot")
    assert scanner._cleared(other) == {r["character"] for r in pikachu[0]["reasons"] if r["verdict"] == "quarantine"}
