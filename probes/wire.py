"""The probe seam's wire format: a probe outcome as JSON, so it can travel through Redis (RQ's JSON
serializer; nothing is ever pickled) from a GPU worker to the gate. Images go as PNG, vectors as lists."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from probes.engine import ProbeOutcome
from probes.likelihood import CharacterGain
from probes.probe_set import Probe


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
    )
