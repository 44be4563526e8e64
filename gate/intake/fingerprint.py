"""Hash a file and its tensor content, and find non-finite weights, in one bounded-memory pass."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from gate.errors import IntakeError, Refusal
from gate.intake.header import Header, TensorInfo

CHUNK_BYTES = 8 * 1024 * 1024  # a multiple of every float's size, so chunks split no element
# For each float dtype: its bits viewed as unsigned, the mask that drops the sign, and the smallest
# sign-less pattern that is Inf or NaN (exponent all ones; E4M3's only non-finite is S.1111.111).
_NON_FINITE = {
    "F16": (np.uint16, 0x7FFF, 0x7C00),
    "BF16": (np.uint16, 0x7FFF, 0x7F80),
    "F32": (np.uint32, 0x7FFFFFFF, 0x7F800000),
    "F64": (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
    "F8_E5M2": (np.uint8, 0x7F, 0x7C),
    "F8_E4M3": (np.uint8, 0x7F, 0x7F),
}


@dataclass(frozen=True)
class Fingerprints:
    file_sha256: str
    tensor_hash: str  # independent of __metadata__, header formatting and tensor order


class _FileDigest(threading.Thread):
    """sha256 of the validated file on a second thread; hashlib drops the GIL, so it runs beside the scan.

    It reads the same open file (pread: no shared offset) up to the validated size, so the hash is of the
    bytes that were checked even if the path is replaced meanwhile."""

    def __init__(self, fd: int, size: int):
        super().__init__(daemon=True)
        self.fd, self.size, self.digest, self.error = fd, size, "", None
        self.cancelled = threading.Event()  # set when the scan refuses the file: stop reading

    def run(self) -> None:
        digest = hashlib.sha256()
        offset = 0
        try:
            while offset < self.size and not self.cancelled.is_set():
                chunk = os.pread(self.fd, min(1024 * 1024, self.size - offset), offset)
                if not chunk:
                    raise OSError("the file shrank while it was read")
                digest.update(chunk)
                offset += len(chunk)
        except OSError as exc:
            self.error = exc
        self.digest = digest.hexdigest()


def _has_non_finite(dtype: str, data: memoryview, scratch: np.ndarray) -> bool:
    spec = _NON_FINITE.get(dtype)
    if spec is None:
        return False
    unsigned, mask, threshold = spec
    bits = np.frombuffer(data, dtype=unsigned)
    masked = np.bitwise_and(bits, mask, out=scratch[: data.nbytes].view(unsigned))
    return bool(masked.size) and int(masked.max()) >= threshold


def _scan_tensor(stream: BinaryIO, tensor: TensorInfo, buffer: bytearray, scratch: np.ndarray) -> str:
    digest = hashlib.sha256()
    remaining = tensor.nbytes
    view = memoryview(buffer)
    while remaining:
        size = min(remaining, len(buffer))
        got = stream.readinto(view[:size])
        if got != size:
            raise IntakeError(Refusal.DATA_TRUNCATED, f"the file ended inside tensor {tensor.name!r}")
        chunk = view[:size]
        digest.update(chunk)
        if _has_non_finite(tensor.dtype, chunk, scratch):
            raise IntakeError(
                Refusal.NON_FINITE_WEIGHTS, f"tensor {tensor.name!r} holds NaN or Inf values"
            )
        remaining -= size
    return digest.hexdigest()


def fingerprint(stream: BinaryIO, header: Header) -> Fingerprints:
    """Read every tensor once in file order (stream is positioned anywhere); memory stays at two chunks."""
    file_digest = _FileDigest(stream.fileno(), header.file_size)
    file_digest.start()
    # Buffers no larger than the largest tensor: small files (most hostile ones) cost kilobytes, not megabytes.
    chunk = min(CHUNK_BYTES, max(t.nbytes for t in header.tensors) + 8)
    buffer = bytearray(chunk)
    scratch = np.empty(chunk, dtype=np.uint8)
    per_tensor = {}
    try:
        stream.seek(header.data_start)
        for tensor in header.tensors:
            per_tensor[tensor.name] = (tensor.dtype, list(tensor.shape),
                                       _scan_tensor(stream, tensor, buffer, scratch))
    except BaseException:
        file_digest.cancelled.set()
        raise
    finally:
        file_digest.join()
    if file_digest.error:
        raise IntakeError(Refusal.FILE_UNREADABLE, f"cannot read the file: {file_digest.error}")
    canonical = json.dumps(sorted(per_tensor.items()), separators=(",", ":")).encode()
    return Fingerprints(file_digest.digest, hashlib.sha256(canonical).hexdigest())
