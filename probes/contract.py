"""The probe seam, torch-free: what the gate and a probe worker exchange and must both understand.

A probe request goes out as JSON (probes.jobs); a probe outcome comes back as JSON (`outcome_to_json`,
`outcome_from_json`) through Redis, whose RQ serializer is JSON: nothing is ever pickled. Images travel as PNG,
vectors as lists. `UnsupportedLora` is the GPU side's typed "cannot apply this LoRA" answer; `embedder_id`
names the embedder both sides must agree on. Nothing here imports torch, so the gate's processes can use it.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from probes.likelihood import CharacterGain
from probes.probe_set import Probe


class UnsupportedLora(Exception):
    """The LoRA cannot be applied to this base model; the outcome is 'unsupported', not a crash."""

    code = "lora_unsupported"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class ProbeOutcome:
    probe_set_id: str
    probes: list[Probe]
    lora_images: np.ndarray  # (n, h, w, 3) uint8
    base_images: np.ndarray
    lora_embeddings: np.ndarray  # (n, d)
    base_embeddings: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    likelihood: list[CharacterGain] = field(default_factory=list)  # strongest first; empty when not measured
    scope: dict = field(default_factory=dict)  # what the likelihood probe covered: registry version, shortlist


_digests: dict[tuple, str] = {}  # a model's files by name, size and mtime -> digest: each model read once


def _directory_digest(path: Path) -> str:
    files = sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors"))
    key = (str(path), tuple((file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files))
    if key not in _digests:  # jobs ask for it every time; a real CLIP's weights are hundreds of MB
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
        _digests[key] = digest.hexdigest()[:12]
    return _digests[key]


def embedder_id(embedder_dir: str | Path) -> str:
    """An embedder's identity: its directory name and a digest of its config and weights."""
    return f"{Path(embedder_dir).name}@{_directory_digest(Path(embedder_dir))}"



def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _unpng(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text)), formats=["PNG"]) as image:
        return np.asarray(image.convert("RGB"))


def outcome_to_json(outcome: ProbeOutcome, embedder_id: str) -> dict:
    """Everything the gate needs to match and keep evidence, as plain JSON."""
    return {
        "probe_set": outcome.probe_set_id,
        "embedder": embedder_id,
        "probes": [{"prompt": p.prompt, "seed": p.seed, "source": p.source, "direction": p.direction,
                    "strength": p.strength} for p in outcome.probes],
        "lora_images": [_png(image) for image in outcome.lora_images],
        "base_images": [_png(image) for image in outcome.base_images],
        "lora_embeddings": outcome.lora_embeddings.astype(np.float32).tolist(),
        "base_embeddings": outcome.base_embeddings.astype(np.float32).tolist(),
        "timings": outcome.timings,
        "likelihood": [gain.to_dict() for gain in outcome.likelihood],
        "scope": outcome.scope,
    }


def outcome_from_json(data: dict) -> ProbeOutcome:
    """The inverse of outcome_to_json."""
    probes = [Probe(p["prompt"], int(p["seed"]), p["source"], p.get("direction"), float(p.get("strength") or 0.0))
              for p in data["probes"]]
    return ProbeOutcome(
        data["probe_set"], probes,
        np.stack([_unpng(text) for text in data["lora_images"]]),
        np.stack([_unpng(text) for text in data["base_images"]]),
        np.asarray(data["lora_embeddings"], dtype=np.float32),
        np.asarray(data["base_embeddings"], dtype=np.float32),
        dict(data.get("timings") or {}),
        [CharacterGain.from_dict(gain) for gain in data.get("likelihood") or []],
        dict(data.get("scope") or {}),
    )
