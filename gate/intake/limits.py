"""Bounds on what intake will read, part of the gate's settings (`[intake]`, GATE_INTAKE_*) but defined here so
that intake stays a leaf."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class IntakeLimits:
    """Bounds on what intake will read; far below safetensors' own (100 MB header) so a hostile file stays cheap."""

    max_file_bytes: int = 4096 * MiB
    max_header_bytes: int = 16 * MiB
    max_metadata_bytes: int = 8 * MiB
    max_tensors: int = 50_000
    max_dims: int = 8
