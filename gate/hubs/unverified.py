"""Room for bodies whose signature can only be checked at their end (v1: an HMAC over the whole body).

Such a body is held in memory, never written to disk, until its signature is checked, so an unauthenticated
request costs the gate no disk at all. The memory is bounded: at most `total` bytes across all of them at once,
one of them at most half of that, and `per_address` of them from one address. A larger upload is signed over
its sha256 (v2, gate.hubs.signatures), which is checked on the request's head before any of its body is read.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from gate.errors import GateError


class Unverified(GateError):
    code = "unverified_busy"

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait where waiting helps (the room is taken), none where the request must change."""
        return 5 if self.code in ("unverified_busy", "too_many_unverified") else None


class UnverifiedBodies:
    def __init__(self, total: int, per_address: int):
        self.total, self.per_address = total, per_address
        self.largest = total // 2
        self._lock = threading.Lock()
        self._held = 0
        self._by_address: dict[str, int] = {}

    @contextmanager
    def hold(self, address: str, length: int | None):
        """Reserve `length` bytes for one body from `address` while the caller reads and checks it."""
        if length is None:
            raise Unverified("a body signed with v1 needs a Content-Length; send one, or sign the body's sha256 "
                             "(v2)", "length_required")
        if length > self.largest:
            raise Unverified(f"a body signed with v1 may be at most {self.largest} bytes; sign larger ones over "
                             "their sha256 (v2: X-Gate-Content-SHA256 and v2= in X-Gate-Signature)",
                             "digest_signature_required")
        with self._lock:
            if self._by_address.get(address, 0) >= self.per_address:
                raise Unverified(f"at most {self.per_address} v1-signed bodies at once from one address",
                                 "too_many_unverified")
            if self._held + length > self.total:
                raise Unverified("the gate is checking as many v1-signed bodies as it holds room for; retry "
                                 "shortly, or sign the body's sha256 (v2)")
            self._held += length
            self._by_address[address] = self._by_address.get(address, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= length
                self._by_address[address] -= 1
                if not self._by_address[address]:
                    del self._by_address[address]
