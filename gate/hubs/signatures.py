"""Authenticating hub deliveries: Stripe-style signed uploads and Hugging Face's webhook secret."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from gate.errors import GateError

REPLAY_WINDOW_SECONDS = 300
MAX_HEADER = 1024  # a timestamp and a few rotated signatures
# ASCII only: str.isdigit() and int() accept other scripts' digits ('²', '٣', '３'), and compare_digest raises
# on non-ASCII text; a header that is not exactly this shape is refused with a code before anything else.
_TIMESTAMP, _SIGNATURE = re.compile(r"[0-9]{1,12}"), re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(GateError):
    code = "signature_invalid"


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The X-Gate-Signature value for `body`: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signer(secret: str, timestamp: int):
    """An incremental signer, for bodies streamed to disk rather than held in memory."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256)


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """(timestamp, v1 signatures) from a header; several v1 values are allowed during secret rotation."""
    if not header:
        raise SignatureError("missing X-Gate-Signature header", "signature_missing")
    timestamp, signatures = None, []
    if len(header) <= MAX_HEADER and header.isascii():
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t" and _TIMESTAMP.fullmatch(value):
                timestamp = int(value)
            elif key == "v1" and _SIGNATURE.fullmatch(value):
                signatures.append(value.lower())
    if timestamp is None or not signatures:
        raise SignatureError("X-Gate-Signature must look like t=<unix seconds>,v1=<hex hmac>", "signature_malformed")
    return timestamp, signatures


def check_timestamp(timestamp: int, now: float | None = None, window: int = REPLAY_WINDOW_SECONDS) -> None:
    now = time.time() if now is None else now
    if abs(now - timestamp) > window:
        raise SignatureError(
            f"signature timestamp is {int(now - timestamp)} s from now; the window is {window} s", "signature_expired"
        )


def check_mac(expected_hex: str, signatures: list[str]) -> None:
    if not any(hmac.compare_digest(expected_hex, candidate) for candidate in signatures):
        raise SignatureError("the signature does not match the body", "signature_mismatch")


def verify(header: str | None, body: bytes, secret: str, now: float | None = None) -> int:
    """Verify a whole-body signature; returns its timestamp or raises SignatureError."""
    timestamp, signatures = parse_header(header)
    check_timestamp(timestamp, now)
    check_mac(hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest(), signatures)
    return timestamp


def verify_shared_secret(received: str | None, secret: str) -> None:
    """Hugging Face sends the webhook secret verbatim in X-Webhook-Secret; compare in constant time."""
    if not received or not hmac.compare_digest(received.encode(), secret.encode()):
        raise SignatureError("X-Webhook-Secret does not match", "webhook_secret_mismatch")
