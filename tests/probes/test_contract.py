"""A model's identity: its directory's name and a digest of its files, read once while they stay the same."""

from __future__ import annotations

import os

from probes.contract import embedder_id


def test_an_embedders_identity_follows_its_files(tmp_path):
    model = tmp_path / "clip"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights-1")
    first = embedder_id(model)
    assert first.startswith("clip@") and embedder_id(model) == first
    (model / "model.safetensors").write_bytes(b"weights-2")  # same size, new bytes: retrained in place
    os.utime(model / "model.safetensors", ns=(1, 1))
    second = embedder_id(model)
    assert second != first
    (model / "README.txt").write_text("not part of the model")
    assert embedder_id(model) == second
