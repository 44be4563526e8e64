"""The door to the torch side, for the operator's local commands: the probe engine (base model and embedder)
or the embedder alone, loaded from settings in this process. The GPU worker loads its engine in probes.jobs;
the web gate and the record's workers never come here (import contracts in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gate.config import Settings


def load_scanner(settings: Settings, db, echo: Callable[[str], None] | None = None):
    """A scanner with the resident probe engine (loaded once per process, shared with any probe job run here)."""
    settings.require_models()  # a clear ConfigError before the slow imports
    from gate.detection.scanner import Scanner
    from probes.jobs import engine

    if echo:
        echo(f"loading base model {settings.base_model} and embedder {settings.embedder} ...")
    return Scanner(settings, db, engine(settings))


def lazy_embedder(settings: Settings) -> Callable[[list[np.ndarray]], np.ndarray]:
    """An embed function that loads the embedder alone (no diffusion pipeline) on its first call: what
    registering or changing a character needs, and only when some reference has no vector yet."""
    loaded = []

    def embed(images: list[np.ndarray]) -> np.ndarray:
        if not loaded:
            from probes.engine import EmbeddingEngine
            from probes.probe_set import load_probe_set

            loaded.append(EmbeddingEngine(settings.embedder, load_probe_set(settings.probe_set), settings.device))
        return loaded[0].embed(images)

    return embed
