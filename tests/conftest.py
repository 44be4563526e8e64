"""Shared fixtures: the intake corpus (built once per session from fixtures/), and a runner for the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import intake_corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """The intake corpus: valid LoRAs of every format and family, and one hostile file per failure kind."""
    target = tmp_path_factory.mktemp("intake-corpus")
    intake_corpus.build(target)
    return target


@pytest.fixture(scope="session")
def corpus(corpus_dir) -> list[dict]:
    return json.loads((corpus_dir / "corpus.json").read_text())


def run_gate(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `gate` command in a fresh process, as a user or a script would."""
    return subprocess.run(
        [sys.executable, "-m", "gate", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def gate_cli():
    return run_gate
