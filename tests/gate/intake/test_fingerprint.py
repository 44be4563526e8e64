"""Hashes: the file hash is plain sha256; the tensor hash ignores metadata, header layout and tensor order."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
from safetensors.numpy import save

from fixtures.intake_corpus import kohya_metadata, lora_tensors
from gate.intake import inspect_file


def _write(path, data: bytes):
    path.write_bytes(data)
    return inspect_file(path).to_dict()


def _reordered(data: bytes) -> bytes:
    """The same tensors with their data stored in reverse order and the header keys shuffled."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    metadata = header.pop("__metadata__", None)
    chunks, offset, new_header = [], 0, {}
    for name in sorted(header, reverse=True):
        begin, end = header[name]["data_offsets"]
        chunks.append(body[begin:end])
        new_header[name] = {**header[name], "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    if metadata:
        new_header["__metadata__"] = metadata
    raw = json.dumps(new_header, indent=2).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def test_file_sha256_is_the_plain_sha256(tmp_path):
    data = save(lora_tensors("sd15", "kohya"))
    result = _write(tmp_path / "a.safetensors", data)
    assert result["file_sha256"] == hashlib.sha256(data).hexdigest()


def test_tensor_hash_ignores_metadata_layout_and_order(tmp_path):
    tensors = lora_tensors("sd15", "kohya")
    plain = _write(tmp_path / "a.safetensors", save(tensors))
    retitled = _write(tmp_path / "b.safetensors", save(tensors, metadata=kohya_metadata("sd15", "innocent")))
    reordered = _write(tmp_path / "c.safetensors", _reordered(save(tensors, metadata={"x": "y"})))
    assert reordered["ok"], reordered.get("error")
    assert plain["tensor_hash"] == retitled["tensor_hash"] == reordered["tensor_hash"]
    assert len({plain["file_sha256"], retitled["file_sha256"], reordered["file_sha256"]}) == 3


def test_tensor_hash_changes_with_any_value(tmp_path):
    tensors = lora_tensors("sd15", "kohya")
    before = _write(tmp_path / "a.safetensors", save(tensors))
    name = next(iter(tensors))
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] += np.float16(0.001)
    after = _write(tmp_path / "b.safetensors", save(tensors))
    assert before["tensor_hash"] != after["tensor_hash"]


def test_embedded_model_hash_is_not_trusted(tmp_path):
    meta = kohya_metadata("sd15", "x")
    result = _write(tmp_path / "a.safetensors", save(lora_tensors("sd15", "kohya"), metadata=meta))
    assert result["metadata"]["claimed_model_hash"] == meta["sshs_model_hash"]
    assert result["tensor_hash"] != meta["sshs_model_hash"] != result["file_sha256"]


def test_non_finite_found_beyond_the_first_chunk(tmp_path):
    big = np.zeros((9 * 1024 * 1024 // 2,), dtype=np.float16)  # 9 MiB: spans two read chunks
    big[-1] = np.inf
    tensors = {"lora_unet_a_attn1_to_q.lora_down.weight": np.zeros((4, 8), np.float16),
               "lora_unet_a_attn1_to_q.lora_up.weight": big.reshape(-1, 4)}
    result = _write(tmp_path / "a.safetensors", save(tensors))
    assert result["error"]["code"] == "non_finite_weights"
