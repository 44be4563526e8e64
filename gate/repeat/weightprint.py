"""A weight-space fingerprint of what a LoRA changes, and an index to look fingerprints up in.

A LoRA module changes a weight by ΔW = up·down·(alpha/rank). Two files that change the model the same way
have the same ΔW however they are stored: alpha rescaled with up/down compensated, up/down re-factorised
((U·R)(R⁻¹·D)), ranks padded with zeros, fp32/fp16/bf16, kohya or diffusers/peft key names (intake's layout
already maps both to one component and module name). So the fingerprint is of ΔW itself, sketched with
fixed random matrices seeded deterministically by the dimensions: Hᵀ·ΔW·G computed as (Hᵀ·up)·(down·G),
which costs O(rank·dim) and never materialises ΔW (an SDXL module's is 1280x1280, a conv's far larger).
Sketches preserve inner products in expectation, so cosines of sketches estimate cosines of ΔWs.

Two scores compare fingerprints: `similarity`, the cosine of the whole LoRAs' ΔWs (a near-duplicate is
close to 1, noise and quantisation barely move it), and `containment`, how much of a stored LoRA's ΔW is
found in the query module by module (each module's cosine, weighted by the stored module's energy): a LoRA
merged into another keeps its modules' directions where the other changes little or elsewhere.

Tensors are read only from files whose safetensors header and LoRA layout intake validated; nothing is
unpickled, and numpy alone is needed (the web gate never imports torch).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from math import prod
from pathlib import Path

import numpy as np

from gate.config import IntakeLimits
from gate.errors import GateError
from gate.intake.header import Header, TensorInfo, read_header
from gate.intake.layout import Layout, Module, read_layout

VERSION = "wp1"  # changes whenever the sketches would: stored fingerprints of another version are not compared
SKETCH_SIDE = 8  # per module a SKETCH_SIDE x SKETCH_SIDE sketch of ΔW
MODULE_DIMS = SKETCH_SIDE * SKETCH_SIDE
GLOBAL_DIMS = 128  # the whole LoRA, count-sketched from its modules' sketches: what the index scans
_SEED = 0x5EED_1A7A
_CACHED_DIM = 16_384
# Widest input or output and highest rank fingerprinted (SD, SDXL, Flux, T5: widths <= 12,288): a module
# beyond them is skipped, so a hostile file costs bounded memory (a [MAX_DIM, 8] sketch, 16 MiB).
MAX_DIM = 1 << 18
MAX_RANK = 4096
CHUNK_BYTES = 8 * 1024 * 1024  # tensors are read in row blocks of at most this many bytes


class WeightprintError(GateError):
    code = "weightprint_failed"


def _make_projection(dim: int, side: str) -> np.ndarray:
    rng = np.random.default_rng([_SEED, dim, 1 if side == "in" else 2])
    matrix = rng.standard_normal((dim, SKETCH_SIDE), dtype=np.float64) / np.sqrt(SKETCH_SIDE)
    matrix.setflags(write=False)
    return matrix


_cached_projection = lru_cache(maxsize=64)(_make_projection)


def _projection(dim: int, side: str) -> np.ndarray:
    """A fixed Gaussian sketch for one dimension (in or out), the same in every process; only the widths real
    models use are cached, so a hostile file's odd widths cannot fill memory."""
    return _cached_projection(dim, side) if dim <= _CACHED_DIM else _make_projection(dim, side)


@lru_cache(maxsize=4096)
def _buckets(module: str) -> tuple[np.ndarray, np.ndarray]:
    """Where a module's sketch lands in the global vector (a count sketch keyed by the module's name)."""
    seed = int.from_bytes(hashlib.sha256(f"{VERSION}:{module}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return rng.integers(0, GLOBAL_DIMS, MODULE_DIMS), rng.choice(np.array([-1.0, 1.0]), MODULE_DIMS)


def _f8_table(exponent_bits: int, bias: int) -> np.ndarray:
    """float32 values of every byte of an 8-bit float (E4M3 'fn' or E5M2)."""
    mantissa_bits = 7 - exponent_bits
    values = np.zeros(256, dtype=np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent = (byte >> mantissa_bits) & ((1 << exponent_bits) - 1)
        mantissa = byte & ((1 << mantissa_bits) - 1)
        if exponent == 0:
            values[byte] = sign * mantissa / (1 << mantissa_bits) * 2.0 ** (1 - bias)
        else:  # intake refuses the non-finite patterns, so none reach here
            values[byte] = sign * (1 + mantissa / (1 << mantissa_bits)) * 2.0 ** (exponent - bias)
    return values


_F8 = {"F8_E4M3": _f8_table(4, 7), "F8_E5M2": _f8_table(5, 15)}


def decode(dtype: str, raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A safetensors tensor's little-endian bytes as float64, for every float dtype intake accepts."""
    if dtype == "F32":
        values = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F16":
        values = np.frombuffer(raw, dtype="<f2")
    elif dtype == "F64":
        values = np.frombuffer(raw, dtype="<f8")
    elif dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in _F8:
        values = _F8[dtype][np.frombuffer(raw, dtype=np.uint8)]
    else:
        raise WeightprintError(f"cannot read {dtype} weights", "weightprint_dtype")
    return values.astype(np.float64).reshape(shape)


@dataclass(frozen=True)
class Weightprint:
    """Per module (canonical name) a sketch of its ΔW, and the whole LoRA's normalised global vector."""

    modules: tuple[str, ...]
    sketches: np.ndarray  # [modules, MODULE_DIMS]
    vector: np.ndarray  # [GLOBAL_DIMS], unit length (zero for a LoRA that changes nothing)
    skipped: tuple[str, ...] = ()  # modules not fingerprinted (LyCORIS, Tucker mid, odd conv factors)

    @property
    def norm(self) -> float:
        return float(np.sqrt((self.sketches.astype(np.float64) ** 2).sum()))

    def to_blobs(self) -> dict:
        """The columns it is stored in (float16 sketches: cosines need no more)."""
        scale = float(np.abs(self.sketches).max()) or 1.0  # float16 would overflow on huge ΔWs
        return {"version": VERSION, "modules": "\n".join(self.modules), "scale": scale,
                "sketches": (self.sketches / scale).astype("<f2").tobytes(),
                "vector": self.vector.astype("<f4").tobytes()}

    @classmethod
    def from_blobs(cls, row: dict) -> Weightprint:
        modules = tuple(row["modules"].split("\n")) if row["modules"] else ()
        sketches = np.frombuffer(row["sketches"], dtype="<f2").astype(np.float32).reshape(len(modules), MODULE_DIMS)
        return cls(modules, sketches * float(row["scale"]), np.frombuffer(row["vector"], dtype="<f4").copy())


def module_name(module: Module) -> str:
    """One name for a module whatever the file format called it (kohya and peft already agree in layout)."""
    return f"{module.component}.{module.name}"


class _Reader:
    """Reads tensors at the byte ranges a validated header declared, from one open file, in bounded blocks."""

    def __init__(self, fd: int, header: Header):
        self.fd, self.header = fd, header

    def _read(self, info: TensorInfo, offset: int, size: int, shape: tuple[int, ...]) -> np.ndarray:
        raw = os.pread(self.fd, size, self.header.data_start + info.begin + offset)
        if len(raw) != size:
            raise WeightprintError(f"the file ended inside {info.name!r}", "weightprint_truncated")
        values = decode(info.dtype, raw, shape)
        if not np.isfinite(values).all():
            raise WeightprintError(f"{info.name!r} holds NaN or Inf", "weightprint_non_finite")
        return values

    def scalar(self, info: TensorInfo) -> float:
        return float(self._read(info, 0, info.nbytes, (-1,))[0])

    def rows(self, info: TensorInfo, width: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) of the tensor seen as [rows, width], a few MiB at a time."""
        row_bytes = info.nbytes // prod(info.shape) * width
        total = info.nbytes // row_bytes
        step = max(1, CHUNK_BYTES // row_bytes)
        for start in range(0, total, step):
            count = min(step, total - start)
            yield start, self._read(info, start * row_bytes, count * row_bytes, (count, width))


def _module_sketch(module: Module, reader: _Reader) -> np.ndarray | None:
    """Hᵀ·ΔW·G for a plain LoRA module, in O(rank·dim); None for what it cannot fingerprint."""
    if module.kind != "lora" or "mid" in module.tensors:
        return None
    down, up = module.tensors["down"], module.tensors["up"]
    rank, fan_in, fan_out = down.shape[0], prod(down.shape[1:]), up.shape[0]
    if prod(up.shape[1:]) != rank:  # an up factor with a kernel of its own: not a plain product
        return None
    if max(fan_in, fan_out) > MAX_DIM or rank > MAX_RANK:
        return None
    inputs, outputs = _projection(fan_in, "in"), _projection(fan_out, "out")
    right = np.empty((rank, SKETCH_SIDE))  # down·G
    for start, block in reader.rows(down, fan_in):
        right[start:start + len(block)] = block @ inputs
    left = np.zeros((SKETCH_SIDE, rank))  # Hᵀ·up
    for start, block in reader.rows(up, rank):
        left += outputs[start:start + len(block)].T @ block
    scale = reader.scalar(module.tensors["alpha"]) / rank if "alpha" in module.tensors else 1.0
    return (scale * (left @ right)).reshape(-1)


def from_layout(fd: int, header: Header, layout: Layout) -> Weightprint:
    """The fingerprint of a file whose header and layout were validated, read from its open descriptor."""
    reader = _Reader(fd, header)
    names, sketches, skipped = [], [], []
    for module in sorted(layout.modules, key=module_name):
        sketch = _module_sketch(module, reader)
        if sketch is None:
            skipped.append(module_name(module))
            continue
        names.append(module_name(module))
        sketches.append(sketch)
    if not names:
        raise WeightprintError("no plain LoRA modules to fingerprint (LyCORIS only)", "weightprint_unsupported")
    matrix = np.asarray(sketches, dtype=np.float64)
    return Weightprint(tuple(names), matrix.astype(np.float32), _global_vector(names, matrix), tuple(skipped))


def _global_vector(names: list[str] | tuple[str, ...], sketches: np.ndarray) -> np.ndarray:
    vector = np.zeros(GLOBAL_DIMS, dtype=np.float64)
    for name, sketch in zip(names, sketches, strict=True):
        buckets, signs = _buckets(name)
        np.add.at(vector, buckets, signs * sketch)
    norm = np.linalg.norm(vector)
    return (vector / norm if norm else vector).astype(np.float32)


def fingerprint_file(path: str | Path, limits: IntakeLimits | None = None) -> Weightprint:
    """Validate a file's header and layout (as intake does) and fingerprint it; raises typed errors."""
    limits = limits or IntakeLimits()
    with open(path, "rb") as stream:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise WeightprintError("not a regular file", "file_unreadable")
        header = read_header(stream, status.st_size, limits)
        return from_layout(stream.fileno(), header, read_layout(header))


@dataclass(frozen=True)
class Comparison:
    similarity: float  # cosine of the two LoRAs' whole ΔW (all modules)
    containment: float  # share of the stored LoRA's ΔW found in the query, module by module
    modules_shared: int

    @property
    def score(self) -> float:
        """The transformation-invariant score: the stronger of the two kinds of evidence."""
        return max(self.similarity, self.containment)


def compare(query: Weightprint, stored: Weightprint) -> Comparison:
    """Exact scores between two fingerprints (the re-rank after the index's coarse lookup)."""
    positions = {name: i for i, name in enumerate(query.modules)}
    shared = [(positions[name], j) for j, name in enumerate(stored.modules) if name in positions]
    q = query.sketches.astype(np.float64)
    s = stored.sketches.astype(np.float64)
    q_energy, s_energy = (q**2).sum(axis=1), (s**2).sum(axis=1)
    total_q, total_s = float(q_energy.sum()), float(s_energy.sum())
    if not shared or total_q == 0 or total_s == 0:
        return Comparison(0.0, 0.0, len(shared))
    qi, si = (np.array(index) for index in zip(*shared, strict=True))
    dots = (q[qi] * s[si]).sum(axis=1)
    similarity = float(dots.sum() / np.sqrt(total_q * total_s))
    norms = np.sqrt(q_energy[qi] * s_energy[si])
    cosines = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    containment = float((s_energy[si] * cosines).sum() / total_s)
    return Comparison(similarity, containment, len(shared))


class WeightprintIndex:
    """Unit global vectors in one matrix: a lookup is one matrix-vector product and a partial sort.

    Grows by appending (rows are loaded incrementally from the record); capacity doubles, so appends are
    amortised O(1)."""

    def __init__(self, capacity: int = 1024):
        self._matrix = np.zeros((capacity, GLOBAL_DIMS), dtype=np.float32)
        self.keys: list[str] = []
        self._positions: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, vector: np.ndarray) -> None:
        if key in self._positions:
            self._matrix[self._positions[key]] = vector
            return
        if len(self.keys) == len(self._matrix):
            grown = np.zeros((2 * len(self._matrix), GLOBAL_DIMS), dtype=np.float32)
            grown[: len(self.keys)] = self._matrix
            self._matrix = grown
        self._positions[key] = len(self.keys)
        self._matrix[len(self.keys)] = vector
        self.keys.append(key)

    def add_many(self, keys: list[str], vectors: np.ndarray) -> None:
        """Bulk load (the record at start, a benchmark's synthetic 100,000)."""
        fresh = [(k, v) for k, v in zip(keys, vectors, strict=True) if k not in self._positions]
        needed = len(self.keys) + len(fresh)
        if needed > len(self._matrix):
            grown = np.zeros((max(needed, 2 * len(self._matrix)), GLOBAL_DIMS), dtype=np.float32)
            grown[: len(self.keys)] = self._matrix[: len(self.keys)]
            self._matrix = grown
        start = len(self.keys)
        if fresh:
            self._matrix[start:needed] = np.asarray([v for _, v in fresh], dtype=np.float32)
        for offset, (key, _) in enumerate(fresh):
            self._positions[key] = start + offset
            self.keys.append(key)

    def search(self, vector: np.ndarray, floor: float, limit: int = 32) -> list[tuple[str, float]]:
        """Keys whose global cosine with `vector` is at least `floor`, best first, at most `limit`."""
        if not self.keys:
            return []
        scores = self._matrix[: len(self.keys)] @ vector.astype(np.float32)
        hits = np.flatnonzero(scores >= floor)
        if len(hits) > limit:
            hits = hits[np.argpartition(-scores[hits], limit - 1)[:limit]]
        hits = hits[np.argsort(-scores[hits])]
        return [(self.keys[i], float(scores[i])) for i in hits]
