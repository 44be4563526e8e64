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


class LazyImageEmbedder:
    """The image embedder (probes.embed.ImageScreeningEmbedder) for the operator's commands, loaded on first
    use; its identities are known before (they hash its files, load nothing)."""

    def __init__(self, settings: Settings):
        from gate.images.screen import image_ids

        self.settings = settings
        ids = image_ids(settings)
        self.reference_id, self.vectors_id = ids.references, ids.vectors
        self._loaded = None

    def _embedder(self):
        if self._loaded is None:
            from probes.embed import ImageScreeningEmbedder
            from probes.quiet import quiet_libraries

            quiet_libraries()
            self._loaded = ImageScreeningEmbedder(self.settings.image_embedder, self.settings.device or None)
        return self._loaded

    def references(self, images: list[np.ndarray]) -> np.ndarray:
        return self._embedder().references(images)

    def images(self, images: list[np.ndarray]) -> np.ndarray:
        return self._embedder().images(images)
