"""Hostile headers and bodies at the web edge: every one is a typed error (401/400 with a code, JSON for the
API), never a 500. Non-ASCII digits in a signature, non-ASCII where hex belongs, oversized headers, and JSON
nested deeper than any parser should recurse, in every place the gate reads JSON from outside."""

from __future__ import annotations

import base64
import io
import json

import pytest

from gate.hubs.client import multipart
from gate.hubs.signatures import sign
from gate.jsontext import MAX_DEPTH, depth
from tests.support import UPLOAD_SECRET

GOOD_MAC = "0" * 64
DEEP = "[" * 50_000 + "]" * 50_000  # far past Python's recursion limit
JUST_TOO_DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)


def _multipart(meta: str | None = None) -> tuple[bytes, str]:
    body, content_type = multipart(b"weights", None, "lora.safetensors")
    if meta is not None:  # a raw meta part, whatever it holds
        boundary = content_type.split("boundary=")[1]
        part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n{meta}\r\n").encode()
        body = part + body
    return body, content_type


@pytest.mark.parametrize("header", [
    "t=²,v1=00",  # the outside test's request: '²'.isdigit() is True, int('²') raises
    f"t=٣٤٥,v1={GOOD_MAC}",  # Arabic-Indic digits
    f"t=１７００００００００,v1={GOOD_MAC}",  # fullwidth digits
    "t=1700000000,v1=" + "é" * 64,  # non-ASCII where hex belongs (compare_digest raises on it)
    "t=1700000000,v1=" + "g" * 64,  # not hex
    "t=1700000000,v1=" + "0" * 63,  # not a SHA-256 length
    "t=" + "9" * 40 + f",v1={GOOD_MAC}",  # a timestamp no clock will reach
    f"t=1700000000,v1={GOOD_MAC}," + "x" * 5000,  # oversized
], ids=["superscript", "arabic-indic", "fullwidth", "non-ascii-mac", "non-hex-mac", "short-mac", "huge-timestamp",
        "oversized"])
def test_malformed_signature_headers_are_refused_with_a_code(client, header):
    body, content_type = _multipart()
    for path, data, kind in (("/v1/uploads", body, content_type), ("/v1/uploads", b'{"url": "x"}', "application/json")):
        response = client.post(path, data=io.BytesIO(data), content_type=kind,
                               headers={"X-Gate-Signature": header.encode("utf-8").decode("latin-1")})
        assert response.status_code == 401, response.get_data(as_text=True)[:300]
        assert response.get_json()["error"]["code"] == "signature_malformed"


def test_non_ascii_in_a_form_token_is_refused_not_a_crash(client):
    client.get("/login")
    response = client.post("/login", data={"username": "x", "password": "y", "csrf": "é" * 40})
    assert response.status_code == 403


@pytest.mark.parametrize("meta", [DEEP, JUST_TOO_DEEP, '{"a":' * 5000 + "1" + "}" * 5000],
                         ids=["deep-arrays", "one-past-the-limit", "deep-objects"])
def test_deep_json_in_a_signed_uploads_meta_is_refused(client, meta):
    body, content_type = _multipart(meta)
    response = client.post("/v1/uploads", data=io.BytesIO(body), content_type=content_type,
                           headers={"X-Gate-Signature": sign(body, UPLOAD_SECRET)})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "json_too_deep"


def test_deep_json_in_a_signed_url_upload_is_refused(client):
    raw = ('{"url": "https://example.org/x.safetensors", "meta": ' + DEEP + "}").encode()
    response = client.post("/v1/uploads", data=raw, content_type="application/json",
                           headers={"X-Gate-Signature": sign(raw, UPLOAD_SECRET)})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "json_too_deep"


def test_deep_json_in_a_webhook_with_the_right_secret_is_refused(make_app):
    client = make_app(huggingface={"webhook_secret": "hook-secret"}).test_client()
    for raw in (DEEP, '{"event": ' + DEEP + "}"):
        response = client.post("/webhooks/huggingface", data=raw.encode(), content_type="application/json",
                               headers={"X-Webhook-Secret": "hook-secret"})
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "json_too_deep"


def test_deep_json_in_the_token_apis_is_refused(make_app, tmp_path):
    from gate.record.audit import Actor
    from gate.record.db import open_db
    from gate.review.accounts import add_account, create_token

    app = make_app()
    db = open_db(tmp_path / "data" / "gate.db")
    add_account(db, Actor("setup", "shell"), "hub1", "hub", party="hub1")
    add_account(db, Actor("setup", "shell"), "rh", "rights_holder", password="correct horse battery", party="RH")
    client = app.test_client()
    for user, method, path in (("hub1", "post", "/v1/uploads/up_x/dispute"), ("rh", "patch", "/v1/characters/c1")):
        token = create_token(db, Actor("setup", "shell"), user)[0]
        response = getattr(client, method)(path, data=DEEP, content_type="application/json",
                                           headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "json_too_deep"


def test_a_deep_queue_cursor_is_refused(make_app, tmp_path):
    from gate.record.audit import Actor
    from gate.record.db import open_db
    from gate.review.accounts import add_account
    from tests.gate.review.conftest import PASSWORD, login

    app = make_app(review={"secret_key": "test-secret"})
    add_account(open_db(tmp_path / "data" / "gate.db"), Actor("setup", "shell"), "mod", "moderator", PASSWORD)
    client = app.test_client()
    login(client, "mod")
    for cursor in (base64.urlsafe_b64encode(DEEP.encode()).decode(), "é" * 10, "A" * 5000):
        response = client.get("/queue", query_string={"after": cursor})
        assert response.status_code == 400 and "cursor_invalid" in response.get_data(as_text=True)


def test_depth_ignores_brackets_inside_strings():
    assert depth(json.dumps({"a": "[[[[{{{{", "b": ["]]]", {"c": "\\\"[["}]})) == 3
