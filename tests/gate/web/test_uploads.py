"""Direct uploads through the Flask app (its test client): signed, durable, idempotent, clear errors.
Over real HTTP with RQ workers: tests/gate/pipeline/test_rq_service.py."""

from __future__ import annotations

import pytest

from gate.hubs.signatures import sign
from tests.support import UPLOAD_SECRET as SECRET
from tests.support import documented, post_upload, wait_for


def test_a_pickle_is_accepted_for_the_record_then_refused_with_its_code(client, corpus_dir):
    response = post_upload(client, (corpus_dir / "pickle_disguised.safetensors").read_bytes(), {"model_id": "m1"})
    assert response.status_code == 202
    answer = documented(response.get_json(), "upload_received")
    assert answer["status_url"].endswith(f"/v1/uploads/{answer['id']}")
    final = wait_for(client, answer["id"])
    assert final["state"] == "refused" and final["verdict"] is None
    assert final["error"]["code"] == "format_pickle"


def test_a_retried_delivery_is_one_upload(client, corpus_dir):
    data = (corpus_dir / "trailing_bytes.safetensors").read_bytes()
    first = post_upload(client, data, {"model_id": "m2", "version_id": "v1"}).get_json()
    again = post_upload(client, data, {"model_id": "m2", "version_id": "v1"}).get_json()
    other_version = post_upload(client, data, {"model_id": "m2", "version_id": "v2"}).get_json()
    assert again["id"] == first["id"] and again["duplicate"] is True
    assert other_version["id"] != first["id"]


@pytest.mark.parametrize("change,status,code", [
    ({"secret": "wrong"}, 401, "signature_mismatch"),
    ({"timestamp": 1_000_000}, 401, "signature_expired"),
])
def test_bad_signatures_are_refused(client, change, status, code):
    response = post_upload(client, b"data", **change)
    assert response.status_code == status
    assert documented(response.get_json(), "error_answer")["error"]["code"] == code


def test_malformed_requests_get_clear_json_errors(client):
    assert client.post("/v1/uploads", data=b"{}", content_type="text/plain",
                       headers={"X-Gate-Signature": sign(b"{}", SECRET)}).status_code == 415
    no_url = client.post("/v1/uploads", data=b"{}", content_type="application/json",  # JSON is a URL upload
                         headers={"X-Gate-Signature": sign(b"{}", SECRET)})
    assert no_url.status_code == 400 and no_url.get_json()["error"]["code"] == "url_missing"
    no_header = client.post("/v1/uploads", data=b"x", content_type="multipart/form-data; boundary=x")
    assert no_header.status_code == 401 and no_header.get_json()["error"]["code"] == "signature_missing"
    body = b"--b\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n{}\r\n--b--\r\n"
    missing = client.post("/v1/uploads", data=body, content_type="multipart/form-data; boundary=b",
                          headers={"X-Gate-Signature": sign(body, SECRET)})
    assert missing.status_code == 400 and missing.get_json()["error"]["code"] == "file_missing"
    bad_meta = post_upload(client, b"x", {"tags": "not-a-list"})
    assert bad_meta.status_code == 400 and bad_meta.get_json()["error"]["code"] == "meta_invalid"
    unknown = client.get("/v1/uploads/up_nothing")
    assert unknown.status_code == 404 and documented(unknown.get_json(), "error_answer")["error"]["code"]
    for answer in (no_url, no_header, missing, bad_meta):
        documented(answer.get_json(), "error_answer")


def test_unconfigured_secret_answers_503(make_app):
    client = make_app(upload_secret="").test_client()
    assert client.post("/v1/uploads").status_code == 503


def test_health_readiness_and_metrics(client, corpus_dir):
    wait_for(client, post_upload(client, (corpus_dir / "empty.safetensors").read_bytes()).get_json()["id"])
    assert client.get("/healthz").get_json() == {"status": "ok"}
    for icon in ("/favicon.ico", "/favicon.svg"):  # every page's icon, not a 404 in the log on each page
        answer = client.get(icon)
        assert answer.status_code == 200 and answer.mimetype == "image/svg+xml" and b"<svg" in answer.data
    assert client.get("/readyz").get_json()["status"] == "ready"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'gate_uploads{state="refused"} 1' in metrics and "gate_queue_depth" in metrics
