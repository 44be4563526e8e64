"""Authenticating hub deliveries: Stripe-style signed uploads and Hugging Face's webhook secret.

X-Gate-Signature: t=<unix seconds>,v1=<hex>,v2=<hex> (one or more values; several during secret rotation):
- v1 is the HMAC-SHA256 of "<t>." + the body. It can only be checked once the whole body is read, so the gate
  holds such bodies in memory, never on disk, until it is (gate.hubs.unverified), and takes them up to a bound.
- v2 is the HMAC-SHA256 of "<t>." + the body's sha256 in hex, which the request also sends in
  X-Gate-Content-SHA256. It is checked on the request's head, before any of the body is read; the body is then
  streamed and must hash to the signed digest. Any size of upload may be signed this way.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from gate.errors import GateError

REPLAY_WINDOW_SECONDS = 300
DIGEST_HEADER = "X-Gate-Content-SHA256"
MAX_HEADER = 1024  # a timestamp and a few rotated signatures
# ASCII only: str.isdigit() and int() accept other scripts' digits ('²', '٣', '３'), and compare_digest raises
# on non-ASCII text; a header that is not exactly this shape is refused with a code before anything else.
_TIMESTAMP, _SIGNATURE = re.compile(r"[0-9]{1,12}"), re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(GateError):
    code = "signature_invalid"


@dataclass(frozen=True)
class Signature:
    timestamp: int
    v1: tuple[str, ...]  # over the body
    v2: tuple[str, ...]  # over the body's sha256


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The X-Gate-Signature value for `body`: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = signer(secret, timestamp)
    mac.update(body)
    return f"t={timestamp},v1={mac.hexdigest()}"


def sign_digest(sha256_hex: str, secret: str, timestamp: int | None = None) -> str:
    """The X-Gate-Signature value for a body whose sha256 is `sha256_hex` (sent in X-Gate-Content-SHA256)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v2={_digest_mac(secret, timestamp, sha256_hex.lower())}"


def signer(secret: str, timestamp: int):
    """An incremental v1 signer: feed it the body (whole or in pieces) after "<t>."."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256)


def _digest_mac(secret: str, timestamp: int, sha256_hex: str) -> str:
    """The v2 signature: the HMAC of "<t>." + the body's sha256 in lowercase hex."""
    return hmac.new(secret.encode(), f"{timestamp}.{sha256_hex}".encode(), hashlib.sha256).hexdigest()


def parse_header(header: str | None) -> Signature:
    """The timestamp and the v1 and v2 signatures of an X-Gate-Signature header."""
    if not header:
        raise SignatureError("missing X-Gate-Signature header", "signature_missing")
    timestamp, found = None, {"v1": [], "v2": []}
    if len(header) <= MAX_HEADER and header.isascii():
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t" and _TIMESTAMP.fullmatch(value):
                timestamp = int(value)
            elif key in found and _SIGNATURE.fullmatch(value):
                found[key].append(value.lower())
    if timestamp is None or not (found["v1"] or found["v2"]):
        raise SignatureError("X-Gate-Signature must look like t=<unix seconds>,v1=<hex hmac> (or v2=)",
                             "signature_malformed")
    return Signature(timestamp, tuple(found["v1"]), tuple(found["v2"]))


def check_timestamp(timestamp: int, now: float | None = None, window: int = REPLAY_WINDOW_SECONDS) -> None:
    now = time.time() if now is None else now
    if abs(now - timestamp) > window:
        raise SignatureError(
            f"signature timestamp is {int(now - timestamp)} s from now; the window is {window} s", "signature_expired"
        )


def check_mac(expected_hex: str, signatures: list[str]) -> None:
    if not any(hmac.compare_digest(expected_hex, candidate) for candidate in signatures):
        raise SignatureError("the signature does not match the body", "signature_mismatch")


def check_digest_signature(signature: Signature, digest_header: str | None, secret: str) -> str:
    """Check a v2 signature on the head alone; returns the sha256 the body must have."""
    digest = (digest_header or "").strip()
    if not digest.isascii() or not _SIGNATURE.fullmatch(digest):
        raise SignatureError(f"a v2 signature needs {DIGEST_HEADER}: the body's sha256 in hex", "signature_malformed")
    digest = digest.lower()
    check_mac(_digest_mac(secret, signature.timestamp, digest), list(signature.v2))
    return digest


def check_body_digest(expected: str, actual: str) -> None:
    if not hmac.compare_digest(expected, actual):
        raise SignatureError("the body's sha256 is not the one signed", "signature_mismatch")


def verify_body(signature: Signature, body: bytes, secret: str, digest_header: str | None = None) -> None:
    """Check a signature against a body held whole (v2 where the request sent one, else v1)."""
    if signature.v2:
        check_body_digest(check_digest_signature(signature, digest_header, secret), hashlib.sha256(body).hexdigest())
        return
    mac = signer(secret, signature.timestamp)
    mac.update(body)  # not "<t>." + body: that would copy a body held in memory whole
    check_mac(mac.hexdigest(), list(signature.v1))


def verify(header: str | None, body: bytes, secret: str, now: float | None = None,
           digest_header: str | None = None) -> int:
    """Verify a signature over a body held whole; returns its timestamp or raises SignatureError."""
    signature = parse_header(header)
    check_timestamp(signature.timestamp, now)
    verify_body(signature, body, secret, digest_header)
    return signature.timestamp


def verify_shared_secret(received: str | None, secret: str) -> None:
    """Hugging Face sends the webhook secret verbatim in X-Webhook-Secret; compare in constant time."""
    if not received or not hmac.compare_digest(received.encode(), secret.encode()):
        raise SignatureError("X-Webhook-Secret does not match", "webhook_secret_mismatch")
