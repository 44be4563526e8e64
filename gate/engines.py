"""The door to the torch side: loading the probe engine (base model and embedder) or the embedder alone, from
settings. Only processes that render or embed come here: the GPU worker, the record's workers that match, and the
operator's local commands (`gate scan`, `gate calibrate`); the web gate never does.
"""

from __future__ import annotations

from collections.abc import Callable

from gate.config import Settings


def load_scanner(settings: Settings, db, echo: Callable[[str], None] | None = None):
    """Load the probe engine (base model, embedder) once; the slow part of a scan's start."""
    settings.require_models()  # a clear ConfigError before the slow imports
    from gate.detection.scanner import Scanner
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
    from gate.detection.scanner import Scanner
    from probes.engine import EmbeddingEngine
    from probes.probe_set import load_probe_set

    return Scanner(settings, db, EmbeddingEngine(settings.embedder, load_probe_set(settings.probe_set),
                                                 settings.device))
