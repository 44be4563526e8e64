"""Signed deliveries: Stripe-convention HMAC with a replay window, and Hugging Face's shared secret."""

from __future__ import annotations

import pytest

from gate.hubs.signatures import SignatureError, sign, signer, verify, verify_shared_secret

BODY = b'{"model_id": "x"}'


def test_a_fresh_signature_verifies():
    header = sign(BODY, "s3cret")
    assert verify(header, BODY, "s3cret") == int(header.split(",")[0][2:])


def test_incremental_signing_matches_whole_body_signing():
    mac = signer("s3cret", 1700000000)
    for chunk in (BODY[:5], BODY[5:]):
        mac.update(chunk)
    assert sign(BODY, "s3cret", 1700000000) == f"t=1700000000,v1={mac.hexdigest()}"


@pytest.mark.parametrize("header,body,secret,now,code", [
    (None, BODY, "s3cret", None, "signature_missing"),
    ("v1=abc", BODY, "s3cret", None, "signature_malformed"),
    ("t=12,v1=", BODY, "s3cret", None, "signature_malformed"),
    (sign(BODY, "s3cret", 1_000), BODY, "s3cret", 1_000 + 301, "signature_expired"),
    (sign(BODY, "s3cret", 1_000), BODY, "s3cret", 1_000 - 301, "signature_expired"),
    # Fixed times: these are built at collection, and a long suite must not let them expire first.
    (sign(BODY, "other", 1_000), BODY, "s3cret", 1_000, "signature_mismatch"),
    (sign(BODY, "s3cret", 1_000), BODY + b" ", "s3cret", 1_000, "signature_mismatch"),
])
def test_bad_signatures_are_refused_with_a_code(header, body, secret, now, code):
    with pytest.raises(SignatureError) as caught:
        verify(header, body, secret, now)
    assert caught.value.code == code


def test_rotation_accepts_any_listed_signature():
    good = sign(BODY, "new").split(",")[1]
    stale = sign(BODY, "old")
    assert verify(f"{stale},{good}", BODY, "new")


def test_shared_secret():
    verify_shared_secret("hf-secret", "hf-secret")
    for wrong in (None, "", "hf-secreT", "hf-secret "):
        with pytest.raises(SignatureError):
            verify_shared_secret(wrong, "hf-secret")
