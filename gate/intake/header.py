"""Validate a safetensors header (framing, dtypes, shapes, byte ranges, metadata) before any tensor is read."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO

from gate.errors import IntakeError, Refusal
from gate.intake.limits import IntakeLimits

# Bits per element of every dtype safetensors defines; anything else is refused.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3"})
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_MAX_ELEMENTS = 2**62


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it; offsets are relative to the start of the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated header: every tensor's byte range is in bounds, and together they tile the data exactly."""

    tensors: tuple[TensorInfo, ...]  # in file order
    metadata: dict[str, str]
    data_start: int
    file_size: int

    @property
    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


_MAX_DIM = 2**64 - 1  # safetensors reads dimensions as usize
# JSON objects and arrays a legitimate header can hold: three per tensor entry plus what metadata strings
# hold. Counted on the raw bytes before parsing, because parsing builds ~100 bytes of Python objects per
# "{}" (a 16 MiB header of empty objects would take gigabytes).
_CONTAINERS_PER_TENSOR = 3
_CONTAINER_SLACK = 10_000


def _name(text: object) -> str:
    """A name for a message: attacker-controlled, so bounded."""
    text = str(text)
    return repr(text if len(text) <= 80 else text[:80] + "…")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_header(stream: BinaryIO, file_size: int, limits: IntakeLimits) -> Header:
    """Read and validate the header from `stream` (positioned at 0); reads nothing past it."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise IntakeError(Refusal.HEADER_TRUNCATED, f"the file is {len(prefix)} bytes, too short for a header")
    (length,) = struct.unpack("<Q", prefix)
    if length > limits.max_header_bytes:
        raise IntakeError(
            Refusal.HEADER_TOO_LARGE,
            f"the header claims {length} bytes; this gate accepts at most {limits.max_header_bytes}",
        )
    if length == 0 or length > file_size - 8:
        raise IntakeError(
            Refusal.HEADER_LENGTH_INVALID,
            f"the header claims {length} bytes but the file has {max(file_size - 8, 0)} after the length field",
        )
    raw = stream.read(length)
    if len(raw) != length:
        raise IntakeError(Refusal.HEADER_TRUNCATED, "the file ended inside its header")
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > _CONTAINERS_PER_TENSOR * limits.max_tensors + _CONTAINER_SLACK:
        raise IntakeError(
            Refusal.TOO_MANY_TENSORS,
            f"the header holds {containers} JSON objects and arrays, more than {limits.max_tensors} tensors need",
        )
    document, duplicates = _parse_json(raw)
    metadata_object = document.pop("__metadata__", None)
    for owner, key in duplicates:
        if owner is document:
            code = Refusal.METADATA_INVALID if key == "__metadata__" else Refusal.DUPLICATE_TENSOR_NAME
            raise IntakeError(code, f"the key {_name(key)} appears more than once in the header")
        if owner is metadata_object:
            raise IntakeError(Refusal.METADATA_INVALID, f"__metadata__ repeats the key {_name(key)}")
        raise IntakeError(Refusal.TENSOR_ENTRY_INVALID, f"a tensor entry repeats the key {_name(key)}")
    metadata = _validate_metadata(metadata_object, limits)
    if len(document) > limits.max_tensors:
        raise IntakeError(
            Refusal.TOO_MANY_TENSORS,
            f"the header declares {len(document)} tensors; this gate accepts at most {limits.max_tensors}",
        )
    if not document:
        raise IntakeError(Refusal.NO_TENSORS, "the file declares no tensors")
    tensors = sorted(
        (_validate_entry(name, entry, limits) for name, entry in document.items()),
        key=lambda t: (t.begin, t.end),
    )
    data_start = 8 + length
    _check_tiling(tensors, file_size - data_start)
    return Header(tuple(tensors), metadata, data_start, file_size)


def _parse_json(raw: bytes) -> tuple[dict, list[tuple[dict, str]]]:
    """The header object, and (object, key) for every key that appeared twice (json keeps only the last)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntakeError(Refusal.HEADER_NOT_UTF8, f"the header is not UTF-8 (byte {exc.start})") from None
    duplicates: list[tuple[dict, str]] = []

    def build(pairs: list[tuple[str, object]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            duplicates.extend((obj, key) for key, _ in pairs if key in seen or seen.add(key))
        return obj

    try:
        document = json.loads(text, object_pairs_hook=build, parse_constant=_refuse_constant)
    except RecursionError:
        raise IntakeError(Refusal.HEADER_NOT_JSON, "the header nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity literals, over-long integers
        raise IntakeError(Refusal.HEADER_NOT_JSON, f"the header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise IntakeError(Refusal.HEADER_NOT_OBJECT, "the header is JSON but not an object")
    # A strict choice: the reference writer never puts whitespace first, and a header that does is odd.
    if not text.startswith("{"):
        raise IntakeError(Refusal.HEADER_NOT_JSON, "the header must start with '{'")
    # Python's json accepts an escaped lone surrogate ("\ud800"); safetensors (serde) does not, and such a
    # string cannot be written out as UTF-8.
    if any(_has_lone_surrogate(key) for key in document):
        raise IntakeError(Refusal.HEADER_NOT_JSON, "a tensor name holds a lone UTF-16 surrogate escape")
    return document, duplicates


def _validate_metadata(raw: object, limits: IntakeLimits) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise IntakeError(Refusal.METADATA_INVALID, "__metadata__ must map strings to strings")
    try:
        size = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in raw.items())
    except UnicodeEncodeError:
        raise IntakeError(Refusal.METADATA_INVALID, "__metadata__ holds a lone UTF-16 surrogate escape") from None
    if size > limits.max_metadata_bytes:
        raise IntakeError(
            Refusal.METADATA_TOO_LARGE,
            f"__metadata__ holds {size} bytes; this gate accepts at most {limits.max_metadata_bytes}",
        )
    return dict(raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_entry(name: str, entry: object, limits: IntakeLimits) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise IntakeError(
            Refusal.TENSOR_ENTRY_INVALID,
            f"tensor {_name(name)} must be an object with exactly dtype, shape and data_offsets",
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise IntakeError(Refusal.DTYPE_UNKNOWN, f"tensor {_name(name)} has unknown dtype {_name(dtype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > limits.max_dims
        or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape)
    ):
        raise IntakeError(
            Refusal.SHAPE_INVALID,
            f"tensor {_name(name)} has shape {str(shape)[:80]}; expected up to {limits.max_dims} "
            "non-negative integers",
        )
    elements = 1
    for dim in shape:  # in order, as safetensors does: [2**40, 2**40, 0] overflows before the zero
        elements *= dim
        if elements > _MAX_ELEMENTS:
            raise IntakeError(Refusal.SHAPE_INVALID, f"tensor {_name(name)} has a shape whose size overflows")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise IntakeError(
            Refusal.OFFSETS_INVALID,
            f"tensor {_name(name)} has data_offsets {str(offsets)[:80]}; expected [begin, end]",
        )
    bits = elements * DTYPE_BITS[dtype]
    begin, end = offsets
    if bits % 8 or end - begin != bits // 8:
        raise IntakeError(
            Refusal.SIZE_MISMATCH,
            f"tensor {_name(name)} ({dtype} {str(shape)[:80]}) needs {bits / 8:g} bytes but its offsets span "
            f"{end - begin}",
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _check_tiling(tensors: list[TensorInfo], data_size: int) -> None:
    """Byte ranges must cover the data section exactly: no overlap, no gap, nothing after the last tensor."""
    position = 0
    for tensor in tensors:
        if tensor.begin < position:
            raise IntakeError(Refusal.TENSOR_OVERLAP, f"tensor {_name(tensor.name)} overlaps the tensor before it")
        if tensor.begin > position:
            raise IntakeError(
                Refusal.DATA_GAP, f"{tensor.begin - position} unaccounted bytes before tensor {_name(tensor.name)}"
            )
        position = tensor.end
    if position > data_size:
        raise IntakeError(
            Refusal.DATA_TRUNCATED,
            f"the tensors need {position} bytes of data but the file holds {data_size}",
        )
    if position < data_size:
        raise IntakeError(
            Refusal.TRAILING_BYTES,
            f"{data_size - position} bytes follow the last tensor (room for a hidden payload)",
        )
