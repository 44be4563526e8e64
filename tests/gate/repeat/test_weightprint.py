"""Weight-space fingerprints on the fixture world's real LoRA files and real transformed copies of them."""

from __future__ import annotations

import itertools
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fixtures.lora_transforms import TRANSFORMS, write_transforms
from gate.config import IntakeLimits, RepeatSettings
from gate.errors import GateError
from gate.intake import inspect_file
from gate.record.db import open_db
from gate.repeat.screen import fingerprint_inspected, store, stored
from gate.repeat.weightprint import GLOBAL_DIMS, WeightprintIndex, compare, fingerprint_file
from tests.conftest import REPO

LORAS = sorted((REPO / "fixtures" / "world" / "loras").glob("*.safetensors"))
LIMITS = RepeatSettings()


@pytest.fixture(scope="session")
def originals():
    return {path.stem: fingerprint_file(path) for path in LORAS}


@pytest.fixture(scope="session")
def transformed(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Every transformation of every fixture LoRA as a real file: {transform: {lora: path}}; a LoRA is merged
    with the next one in name order."""
    out = tmp_path_factory.mktemp("transformed")
    files: dict[str, dict[str, Path]] = {name: {} for name in TRANSFORMS}
    for index, path in enumerate(LORAS):
        partner = LORAS[(index + 1) % len(LORAS)]
        for name, written in write_transforms(path, out, partner).items():
            files[name][path.stem] = written
    return files


@pytest.fixture(scope="session")
def index(originals):
    built = WeightprintIndex(capacity=4)  # small, so loading it grows the matrix
    for name, print_ in originals.items():
        built.add(name, print_.vector)
    return built


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_transformation_of_every_fixture_lora_is_found(transform, transformed, originals, index):
    for stem, path in transformed[transform].items():
        inspection = inspect_file(path)
        assert inspection.ok, (transform, stem, inspection.error)
        if transform != "metadata":  # only the metadata edit keeps the exact tensor hash
            assert inspection.fingerprints.tensor_hash != inspect_file(REPO / "fixtures/world/loras" /
                                                                       f"{stem}.safetensors").fingerprints.tensor_hash
        query = fingerprint_file(path)
        candidates = [key for key, _ in index.search(query.vector, LIMITS.candidates)]
        assert stem in candidates, (transform, stem, candidates)
        scores = compare(query, originals[stem])
        if transform == "merged":  # the original is contained in the merge, not the same as it
            assert scores.containment >= LIMITS.containment and scores.similarity < LIMITS.similarity, (stem, scores)
        else:
            assert scores.similarity >= 0.99 and scores.containment >= 0.99, (transform, stem, scores)


def test_no_false_match_among_the_distinct_fixture_loras(originals, capsys):
    worst_similarity = worst_containment = worst_global = 0.0
    for first, second in itertools.permutations(originals.values(), 2):
        scores = compare(first, second)
        worst_similarity = max(worst_similarity, abs(scores.similarity))
        worst_containment = max(worst_containment, scores.containment)
        worst_global = max(worst_global, float(first.vector @ second.vector))
    with capsys.disabled():
        print(f"\ndistinct fixture LoRAs: max similarity {worst_similarity:.3f} (threshold {LIMITS.similarity}), "
              f"max containment {worst_containment:.3f} (threshold {LIMITS.containment}), "
              f"max global cosine {worst_global:.3f} (index cut {LIMITS.candidates})")
    assert worst_similarity < LIMITS.similarity / 2
    assert worst_containment < LIMITS.containment / 2
    assert worst_global < LIMITS.candidates


def test_kohya_and_peft_name_the_same_modules_alike(transformed, originals):
    kohya = next(stem for stem in originals if stem.endswith("kohya"))
    swapped = fingerprint_file(transformed["format_swapped"][kohya])
    assert inspect_file(transformed["format_swapped"][kohya]).layout.format == "diffusers"
    assert swapped.modules == originals[kohya].modules
    assert np.allclose(swapped.sketches, originals[kohya].sketches, rtol=1e-4, atol=1e-6)


def test_fingerprints_are_deterministic_and_survive_the_record(tmp_path, originals):
    path = LORAS[0]
    again = fingerprint_file(path)
    assert np.array_equal(again.sketches, originals[path.stem].sketches)
    db = open_db(tmp_path / "gate.db")
    inspection = inspect_file(path)
    store(db, inspection.fingerprints.tensor_hash, inspection.fingerprints.file_sha256,
          fingerprint_inspected(inspection, IntakeLimits()))
    back = stored(db, inspection.fingerprints.tensor_hash)
    assert back.modules == again.modules
    assert compare(back, again).similarity > 0.9999
    assert np.allclose(back.vector, again.vector)


def test_the_index_returns_the_best_first_above_its_floor():
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, GLOBAL_DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = WeightprintIndex(capacity=8)
    built.add_many([f"k{i}" for i in range(2000)], vectors[:2000])
    for i in range(2000, 3000):
        built.add(f"k{i}", vectors[i])
    assert len(built) == 3000
    query = vectors[1234] + 0.1 * vectors[2999]
    query /= np.linalg.norm(query)
    hits = built.search(query, 0.5)
    assert hits[0][0] == "k1234" and all(score >= 0.5 for _, score in hits)
    top = [score for _, score in built.search(query, -1.0, limit=5)]
    assert len(top) == 5 and top == sorted(top, reverse=True)


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    header, offset, data = {}, 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_hostile_and_unsupported_files_get_typed_errors_never_tracebacks(corpus_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    outcomes = {}
    for path in sorted(corpus_dir.glob("*.safetensors")) + sorted(corpus_dir.glob("*.pt")):
        try:
            fingerprint_file(path)
            outcomes[path.name] = "ok"
        except GateError as exc:
            outcomes[path.name] = exc.code
    assert outcomes["pickle_disguised.safetensors"] in ("header_length_invalid", "header_too_large",
                                                       "header_not_json", "header_truncated")
    assert outcomes["sd15_lokr.safetensors"] == "weightprint_unsupported"
    nan = np.array([[np.nan] * 4] * 2, dtype="<f4").tobytes()
    bad = _write_safetensors(tmp_path / "nan.safetensors", {
        "unet.a.lora_A.weight": ("F32", [2, 4], nan), "unet.a.lora_B.weight": ("F32", [4, 2], nan)})
    with pytest.raises(GateError) as caught:
        fingerprint_file(bad)
    assert caught.value.code == "weightprint_non_finite"


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F8_E4M3", "F8_E5M2", "F64"])
def test_every_float_dtype_intake_accepts_is_read(tmp_path, dtype):
    from gate.repeat.weightprint import decode

    values = np.array([0.5, -1.25, 2.0, 0.0], dtype=np.float32)
    raw = {"F16": values.astype("<f2").tobytes(), "F64": values.astype("<f8").tobytes(),
           "BF16": (values.view(np.uint32) >> 16).astype("<u2").tobytes(),
           "F8_E4M3": bytes([0x30, 0xBA, 0x40, 0x00]), "F8_E5M2": bytes([0x38, 0xBD, 0x40, 0x00])}[dtype]
    assert decode(dtype, raw, (4,)).tolist() == values.tolist()


def test_a_module_too_wide_to_fingerprint_is_skipped_not_the_file(tmp_path):
    from gate.repeat.weightprint import MAX_DIM

    small = np.ones((2, 8), dtype="<f4")
    wide = np.ones((1, MAX_DIM + 1), dtype="<f2").tobytes()
    path = _write_safetensors(tmp_path / "wide.safetensors", {
        "unet.a.lora_A.weight": ("F32", [2, 8], small.tobytes()), "unet.a.lora_B.weight": ("F32", [8, 2],
                                                                                            small.T.tobytes()),
        "unet.b.lora_A.weight": ("F16", [1, MAX_DIM + 1], wide),
        "unet.b.lora_B.weight": ("F16", [4, 1], np.ones((4, 1), dtype="<f2").tobytes())})
    print_ = fingerprint_file(path)
    assert print_.modules == ("unet.a",) and print_.skipped == ("unet.b",)
