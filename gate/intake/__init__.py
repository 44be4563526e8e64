"""Intake: decide what an untrusted upload is without executing it. Safetensors only; nothing is unpickled.

The order matters: sniff the bytes, validate the header, recognise the layout, and only then read tensor
data (hashing and checking it in bounded memory).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gate.errors import IntakeError, Refusal
from gate.intake.family import FamilyReport, infer_family
from gate.intake.fingerprint import Fingerprints, fingerprint
from gate.intake.header import Header, read_header
from gate.intake.layout import Layout, read_layout
from gate.intake.limits import IntakeLimits
from gate.intake.metadata import LoraMetadata, parse_metadata
from gate.intake.sniff import HEAD_BYTES, sniff

__all__ = ["Inspection", "IntakeError", "inspect_file"]


@dataclass
class Inspection:
    """Everything intake learned about one file; `error` is set when it was refused."""

    path: str
    file_size: int = 0
    header: Header | None = None
    layout: Layout | None = None
    family: FamilyReport | None = None
    metadata: LoraMetadata | None = None
    fingerprints: Fingerprints | None = None
    error: IntakeError | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """The JSON shape `gate inspect --json` prints and the API returns."""
        layout, family, prints = self.layout, self.family, self.fingerprints
        result = {
            "ok": self.ok,
            "path": self.path.encode("utf-8", "backslashreplace").decode("utf-8"),  # undecodable file names
            "file_size": self.file_size,
            "format": layout.format if layout else None,
            "base_family": family.family if family else None,
            "rank": layout.rank if layout else None,
            "tensor_hash": prints.tensor_hash if prints else None,
            "file_sha256": prints.file_sha256 if prints else None,
            "metadata": self.metadata.to_dict() if self.metadata else None,
        }
        if layout:
            result["lora"] = {
                "formats": layout.formats,
                "modules": len(layout.modules),
                "ranks": {str(k): v for k, v in layout.ranks.items()},
                "components": layout.components,
                "dora": layout.dora,
                "extra_tensors": list(layout.extra_tensors[:20]),
                "embeddings": list(layout.embeddings[:20]),
            }
        if self.header:
            result["tensors"] = len(self.header.tensors)
            result["dtypes"] = sorted({t.dtype for t in self.header.tensors})
        if family:
            result["family"] = {
                "inferred": family.family,
                "evidence": list(family.evidence),
                "claimed": family.claimed,
                "claimed_by": family.claimed_by,
                "mismatch": family.mismatch,
            }
        result["warnings"] = self.warnings
        if self.error:
            result["error"] = self.error.to_dict()
        return result


def inspect_file(path: str | os.PathLike, limits: IntakeLimits | None = None) -> Inspection:
    """Inspect one file; refusals are recorded in `Inspection.error`, never raised."""
    limits = limits or IntakeLimits()
    inspection = Inspection(path=str(path))
    try:
        _inspect(Path(path), limits, inspection)
    except IntakeError as exc:
        inspection.error = exc
    except (OSError, MemoryError) as exc:
        inspection.error = IntakeError(Refusal.FILE_UNREADABLE, f"cannot read the file: {exc}")
    return inspection


def _inspect(path: Path, limits: IntakeLimits, inspection: Inspection) -> None:
    if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening a FIFO for reading blocks
        raise IntakeError(Refusal.FILE_UNREADABLE, "not a regular file")
    with open(path, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):  # replaced between the two checks
            raise IntakeError(Refusal.FILE_UNREADABLE, "not a regular file")
        size = status.st_size
        inspection.file_size = size
        if size > limits.max_file_bytes:
            raise IntakeError(
                Refusal.FILE_TOO_LARGE, f"the file is {size} bytes; this gate accepts at most {limits.max_file_bytes}"
            )
        sniff(stream.read(HEAD_BYTES), size)
        stream.seek(0)
        inspection.header = read_header(stream, size, limits)
        inspection.metadata = parse_metadata(inspection.header.metadata)
        inspection.warnings.extend(inspection.metadata.warnings)
        inspection.layout = read_layout(inspection.header)
        inspection.family = infer_family(inspection.layout, inspection.header.metadata)
        if inspection.family.mismatch:
            inspection.warnings.append(
                f"metadata ({inspection.family.claimed_by}) claims {inspection.family.claimed} but the "
                f"tensor shapes say {inspection.family.family}"
            )
        inspection.fingerprints = fingerprint(stream, inspection.header)
