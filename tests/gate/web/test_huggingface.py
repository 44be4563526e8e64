"""Hugging Face webhooks, URL uploads and the block adapter, through the Flask app with the embedded in-process
queue, against real HTTP servers: the Hub stand-in (tests/gate/hubs/hub_standin.py, the one stand-in) and a plain
file server for URL uploads. Files served are from the intake corpus, which intake refuses without rendering."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from gate.app import create_app
from gate.cli import main
from gate.hubs.signatures import sign
from tests.gate.hubs.hub_standin import HubStandIn

HOOK_SECRET = "hf-webhook-secret"
UPLOAD_SECRET = "url-upload-secret"
SHA_A = "a" * 40
SHA_B = "b" * 40
FINAL = ("fetched", "ignored", "failed", "invalid")


@pytest.fixture
def hub():
    hub = HubStandIn().start()
    yield hub
    hub.stop()


def make_app(tmp_path, hub: HubStandIn, **overrides):
    config = {"data_dir": str(tmp_path / "data"), "upload_secret": UPLOAD_SECRET,
              "huggingface": {"webhook_secret": HOOK_SECRET, "endpoint": hub.endpoint,
                              **overrides.pop("huggingface", {})},
              # the file server below is on loopback, which URL uploads refuse by default
              "fetch": {"allow_private_addresses": True, **overrides.pop("fetch", {})}, **overrides}
    return create_app(config)


@pytest.fixture
def client(tmp_path, hub):
    return make_app(tmp_path, hub).test_client()


def payload(repo: str = "alice/lora", sha: str = SHA_A, scope: str = "repo.content", action: str = "update",
            repo_type: str = "model", old: str | None = None) -> dict:
    """A webhook body as the Hub sends it (webhook.version 3)."""
    body = {"event": {"action": action, "scope": scope},
            "repo": {"type": repo_type, "name": repo, "id": "6571b0d8f2c3", "private": False,
                     "url": {"web": f"https://huggingface.co/{repo}", "api": f"https://huggingface.co/api/models/{repo}"},
                     "headSha": sha, "owner": {"id": "6571b0d8f2c0"}},
            "webhook": {"id": "65c3bbb2d0b0", "version": 3}}
    if old:
        body["updatedRefs"] = [{"ref": "refs/heads/main", "oldSha": old, "newSha": sha}]
    return body


def send_hook(client, body, secret: str | None = HOOK_SECRET):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-Webhook-Secret": secret} if secret is not None else {}
    return client.post("/webhooks/huggingface", data=raw, content_type="application/json", headers=headers)


def wait_delivery(client, delivery_id: str, states=FINAL, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = client.get(f"/v1/deliveries/{delivery_id}").get_json()
        if answer["state"] in states:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"delivery {delivery_id} still {answer['state']}: {answer}")


def wait_upload(client, upload_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = client.get(f"/v1/uploads/{upload_id}").get_json()
        if answer["state"] in ("decided", "refused", "failed"):
            return answer
        time.sleep(0.1)
    raise AssertionError(f"upload {upload_id} still {answer['state']}")


# ---------------------------------------------------------------------------------------------------------
# The webhook's edge: authentication, bodies, events that ask for nothing


def test_no_secret_configured_is_503_with_a_code(tmp_path, hub):
    client = make_app(tmp_path, hub, huggingface={"webhook_secret": ""}).test_client()
    response = send_hook(client, payload())
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "not_configured"


@pytest.mark.parametrize("secret", [None, "", "wrong-secret", HOOK_SECRET + "x"])
def test_a_missing_or_wrong_secret_is_401(client, secret):
    response = send_hook(client, payload(), secret)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "webhook_secret_mismatch"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"event": "x"}', b"\xff\xfe",
                                 json.dumps(payload(repo="../../etc")).encode(),
                                 json.dumps(payload(sha="../main")).encode()])
def test_malformed_bodies_are_400_and_recorded(client, raw):
    response = send_hook(client, raw)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "payload_invalid"


@pytest.mark.parametrize("body,reason", [
    (payload(scope="discussion", action="create"), "scope"),
    (payload(scope="repo.config", action="update"), "scope"),
    (payload(action="delete"), "action"),
    (payload(action="teleport"), "action"),  # an action the Hub may add tomorrow: acknowledged, not refused
    (payload(repo_type="dataset"), "repo type"),
    (payload(repo_type="space"), "repo type"),
])
def test_events_that_add_no_model_files_are_acknowledged_as_ignored(client, hub, body, reason):
    response = send_hook(client, body)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["status"] == "ignored" and reason in answer["reason"]
    recorded = client.get(f"/v1/deliveries/{answer['id']}").get_json()
    assert recorded["state"] == "ignored" and recorded["uploads"] == []
    assert hub.downloads == []


def test_unknown_fields_and_a_missing_head_sha_never_make_an_error(client):
    body = payload()
    body["event"]["surprise"] = {"nested": [1, 2]}
    body["newTopLevel"] = True
    del body["repo"]["headSha"]
    response = send_hook(client, body)
    assert response.status_code == 200
    assert "headSha" in response.get_json()["reason"]


# ---------------------------------------------------------------------------------------------------------
# Fetching at the exact revision


def test_files_are_fetched_at_exactly_the_pushed_revision(client, hub, corpus_dir):
    at_a = (corpus_dir / "random_names.safetensors").read_bytes()
    at_b = (corpus_dir / "trailing_bytes.safetensors").read_bytes()
    hub.add("alice/lora", SHA_A, {"lora.safetensors": at_a, "README.md": b"# card"})
    hub.add("alice/lora", SHA_B, {"lora.safetensors": at_b, "README.md": b"# card"},
            card={"title": "Alice's LoRA", "instance_prompt": "alice style"}, tags=["lora", "sdxl"])
    response = send_hook(client, payload(sha=SHA_B, old=SHA_A))
    assert response.status_code == 202
    answer = response.get_json()
    assert answer["status_url"].endswith(f"/v1/deliveries/{answer['id']}")
    delivery = wait_delivery(client, answer["id"])
    assert delivery["state"] == "fetched" and delivery["revision"] == SHA_B
    [upload] = delivery["uploads"]
    import hashlib

    assert upload["file_sha256"] == hashlib.sha256(at_b).hexdigest()
    assert upload["model_id"] == "alice/lora" and upload["version_id"] == SHA_B
    assert hub.downloads == [("alice/lora", SHA_B, "lora.safetensors")]
    assert wait_upload(client, upload["id"])["state"] == "refused"  # the same scan as a direct upload


def test_the_repos_images_become_the_uploads_previews(client, hub, corpus_dir, tmp_path):
    """What the model card shows is judged with the weights, as a direct upload's preview parts are."""
    from gate.record.db import open_db
    from tests.conftest import REPO

    drawing = (REPO / "fixtures" / "world" / "images" / "held_back" / "ultraman_00.png").read_bytes()
    hub.add("carol/lora", SHA_A, {"lora.safetensors": (corpus_dir / "random_names.safetensors").read_bytes(),
                                  "samples/a.png": drawing, "samples/b.jpg": b"not a jpeg", "notes.txt": b"hi"})
    delivery = wait_delivery(client, send_hook(client, payload("carol/lora")).get_json()["id"])
    [upload] = delivery["uploads"]
    rows = list(open_db(tmp_path / "data" / "gate.db")["upload_previews"].rows_where(
        "upload_id = ?", [upload["id"]], order_by="position"))
    assert [(r["name"], r["refused"]) for r in rows] == [("samples/a.png", None), ("samples/b.jpg", "image_format")]
    assert (tmp_path / "data" / "previews").is_dir() and rows[0]["sha256"]
    assert sorted(d[2] for d in hub.downloads) == ["lora.safetensors", "samples/a.png", "samples/b.jpg"]


def test_only_new_or_changed_weight_files_become_uploads(client, hub, corpus_dir):
    same = (corpus_dir / "random_names.safetensors").read_bytes()
    changed = (corpus_dir / "trailing_bytes.safetensors").read_bytes()
    hub.add("bob/loras", SHA_A, {"one.safetensors": same, "two.safetensors": same})
    hub.add("bob/loras", SHA_B, {"one.safetensors": same, "two.safetensors": changed, "three.safetensors": changed,
                                 "notes.txt": b"not weights"})
    delivery = wait_delivery(client, send_hook(client, payload("bob/loras", SHA_B, old=SHA_A)).get_json()["id"])
    assert sorted(u["filename"] for u in delivery["uploads"]) == ["three.safetensors", "two.safetensors"]


def test_a_redelivery_is_one_delivery_and_fetches_once(client, hub, corpus_dir, tmp_path, monkeypatch):
    hub.add("carol/lora", SHA_A, {"lora.safetensors": (corpus_dir / "random_names.safetensors").read_bytes()})
    first = send_hook(client, payload("carol/lora")).get_json()
    again = send_hook(client, payload("carol/lora")).get_json()
    assert again["id"] == first["id"] and again["duplicate"] is True
    wait_delivery(client, first["id"])
    assert len(hub.downloads) == 1
    monkeypatch.setenv("GATE_DATA_DIR", str(tmp_path / "data"))
    listed = CliRunner().invoke(main, ["deliveries"])
    assert listed.exit_code == 0 and listed.output.count(first["id"]) == 1
    assert "carol/lora@aaaaaaaaaaaa" in listed.output
    shown = CliRunner().invoke(main, ["deliveries", first["id"]])
    assert json.loads(shown.output)["state"] == "fetched"
    assert CliRunner().invoke(main, ["deliveries", "dl_nope"]).exit_code == 1


def test_a_pickle_bin_becomes_an_upload_refused_with_format_pickle(client, hub, corpus_dir):
    hub.add("mallory/lora", SHA_A, {"pytorch_lora_weights.bin": (corpus_dir / "pickle_disguised.safetensors")
                                    .read_bytes()})
    delivery = wait_delivery(client, send_hook(client, payload("mallory/lora")).get_json()["id"])
    [upload] = delivery["uploads"]
    final = wait_upload(client, upload["id"])
    assert final["state"] == "refused" and final["error"]["code"] == "format_pickle"


def test_an_oversize_file_fails_the_delivery_before_any_download(tmp_path, hub, corpus_dir):
    client = make_app(tmp_path, hub, fetch={"max_bytes": 100}).test_client()
    hub.add("dave/big", SHA_A, {"lora.safetensors": (corpus_dir / "random_names.safetensors").read_bytes()})
    delivery = wait_delivery(client, send_hook(client, payload("dave/big")).get_json()["id"])
    assert delivery["state"] == "failed" and delivery["error"]["code"] == "fetch_too_large"
    assert hub.downloads == []


def test_too_many_files_fails_the_delivery(tmp_path, hub, corpus_dir):
    client = make_app(tmp_path, hub, huggingface={"max_files": 2}).test_client()
    data = (corpus_dir / "random_names.safetensors").read_bytes()
    hub.add("erin/many", SHA_A, {f"lora{i}.safetensors": data for i in range(3)})
    delivery = wait_delivery(client, send_hook(client, payload("erin/many")).get_json()["id"])
    assert delivery["error"]["code"] == "too_many_files" and hub.downloads == []


@pytest.mark.parametrize("repo,sha,code", [("nobody/nothing", SHA_A, "repo_not_found"),
                                           ("frank/lora", SHA_B, "revision_not_found")])
def test_a_missing_repo_or_revision_fails_with_a_clear_code(client, hub, corpus_dir, repo, sha, code):
    hub.add("frank/lora", SHA_A, {"lora.safetensors": b"x"})
    delivery = wait_delivery(client, send_hook(client, payload(repo, sha)).get_json()["id"])
    assert delivery["state"] == "failed" and delivery["error"]["code"] == code


def test_a_failed_delivery_sent_again_is_tried_again(client, hub, corpus_dir):
    first = wait_delivery(client, send_hook(client, payload("judy/late")).get_json()["id"])
    assert first["error"]["code"] == "repo_not_found"
    hub.add("judy/late", SHA_A, {"lora.safetensors": (corpus_dir / "random_names.safetensors").read_bytes()})
    again = send_hook(client, payload("judy/late")).get_json()
    assert again["id"] == first["id"] and again["duplicate"] is True
    delivery = wait_delivery(client, again["id"])
    assert delivery["state"] == "fetched" and len(delivery["uploads"]) == 1 and "error" not in delivery


@pytest.mark.parametrize("token,state", [("hf_right", "fetched"), ("hf_wrong", "failed")])
def test_the_token_is_sent_to_the_hub(tmp_path, corpus_dir, token, state):
    hub = HubStandIn(token="hf_right").start()
    try:
        client = make_app(tmp_path, hub, huggingface={"token": token}).test_client()
        hub.add("ivan/private", SHA_A, {"lora.safetensors": (corpus_dir / "random_names.safetensors").read_bytes()})
        delivery = wait_delivery(client, send_hook(client, payload("ivan/private")).get_json()["id"])
        assert delivery["state"] == state
        if state == "failed":
            assert delivery["error"]["code"] == "repo_not_found"
        else:
            assert hub.downloads == [("ivan/private", SHA_A, "lora.safetensors")]
    finally:
        hub.stop()


def test_the_hub_down_then_up_is_retried(client, hub, corpus_dir):
    hub.add("grace/lora", SHA_A, {"lora.safetensors": (corpus_dir / "random_names.safetensors").read_bytes()})
    hub.stop()
    delivery_id = send_hook(client, payload("grace/lora")).get_json()["id"]

    def waiting_for_retry() -> bool:
        answer = client.get(f"/v1/deliveries/{delivery_id}").get_json()
        return answer.get("error", {}).get("code") == "hub_unreachable"

    deadline = time.time() + 60
    while not waiting_for_retry():
        assert time.time() < deadline, "the first attempt never failed"
        time.sleep(0.05)
    hub.start()
    delivery = wait_delivery(client, delivery_id)
    assert delivery["state"] == "fetched" and delivery["attempts"] == 2 and len(delivery["uploads"]) == 1
    assert "error" not in delivery


def test_an_unknown_delivery_is_404(client):
    response = client.get("/v1/deliveries/dl_nope")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "delivery_not_found"


# ---------------------------------------------------------------------------------------------------------
# URL uploads


class FileServer(ThreadingHTTPServer):
    """A plain HTTP server for URL uploads: a file, a 404, a body too big without Content-Length, a loop."""

    def __init__(self, data: bytes):
        requests: list[str] = []
        self.requests = requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection closes

            def do_GET(self):
                requests.append(self.path)
                if self.path == "/lora.safetensors":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path == "/endless":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"\0" * 65536)
                elif self.path.startswith("/loop"):
                    self.send_response(302)
                    self.send_header("Location", "/loop-again" if self.path == "/loop" else "/loop")
                    self.end_headers()
                elif self.path == "/to-localhost":  # the same server under another host name
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/lora.safetensors")
                    self.end_headers()
                elif self.path in ("/to-file", "/to-ftp"):
                    self.send_response(302)
                    self.send_header("Location", "file:///etc/passwd" if self.path == "/to-file" else "ftp://127.0.0.1/x")
                    self.end_headers()
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def files(corpus_dir):
    server = FileServer((corpus_dir / "random_names.safetensors").read_bytes())
    yield server
    server.shutdown()


def post_url(client, body, secret: str = UPLOAD_SECRET):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/uploads", data=raw, content_type="application/json",
                       headers={"X-Gate-Signature": sign(raw, secret)})


def test_a_url_upload_is_fetched_and_scanned(client, files, corpus_dir):
    response = post_url(client, {"url": files.url("/lora.safetensors"), "meta": {"model_id": "m1", "tags": ["x"]}})
    assert response.status_code == 202
    answer = response.get_json()
    again = post_url(client, {"url": files.url("/lora.safetensors"), "meta": {"model_id": "m1", "tags": ["x"]}})
    assert again.get_json()["id"] == answer["id"]
    delivery = wait_delivery(client, answer["id"])
    [upload] = delivery["uploads"]
    assert upload["filename"] == "lora.safetensors" and upload["model_id"] == "m1"
    assert wait_upload(client, upload["id"])["error"]["code"] == "not_a_lora"


@pytest.mark.parametrize("path,code", [("/missing", "fetch_not_found"), ("/endless", "fetch_too_large"),
                                       ("/loop", "fetch_redirects"), ("/to-file", "fetch_redirects"),
                                       ("/to-ftp", "fetch_redirects")])  # any scheme but http(s), alike
def test_url_fetch_failures_are_typed(tmp_path, hub, files, path, code):
    client = make_app(tmp_path, hub, fetch={"max_bytes": 1024 * 1024}).test_client()
    delivery = wait_delivery(client, post_url(client, {"url": files.url(path)}).get_json()["id"])
    assert delivery["state"] == "failed" and delivery["error"]["code"] == code
    assert not list((tmp_path / "data" / "incoming").glob("*.fetch"))  # nothing half-fetched is left


def test_url_uploads_refuse_private_addresses_by_default(tmp_path, hub, files):
    client = make_app(tmp_path, hub, fetch={"allow_private_addresses": False}).test_client()
    for url in (files.url("/lora.safetensors"), files.url("/lora.safetensors").replace("127.0.0.1", "localhost")):
        delivery = wait_delivery(client, post_url(client, {"url": url}).get_json()["id"])
        assert delivery["state"] == "failed" and delivery["error"]["code"] == "url_private"
    assert files.requests == [], "nothing was sent to the private address"


def test_url_uploads_only_from_the_allowed_hosts_redirects_included(tmp_path, hub, files):
    client = make_app(tmp_path, hub, fetch={"allowed_hosts": "example.org, 127.0.0.*"}).test_client()
    refused = post_url(client, {"url": files.url("/lora.safetensors").replace("127.0.0.1", "localhost")})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "url_host_not_allowed"
    assert files.requests == []  # refused before anything was recorded or fetched
    redirected = wait_delivery(client, post_url(client, {"url": files.url("/to-localhost")}).get_json()["id"])
    assert redirected["state"] == "failed" and redirected["error"]["code"] == "url_host_not_allowed"
    assert files.requests == ["/to-localhost"]  # the redirect's target was never asked for
    allowed = wait_delivery(client, post_url(client, {"url": files.url("/lora.safetensors")}).get_json()["id"])
    assert allowed["state"] != "failed" and len(allowed["uploads"]) == 1


@pytest.mark.parametrize("raw,code", [
    (b"{nope", "body_invalid"), (b"[]", "body_invalid"), (b'{"meta": {}}', "url_missing"),
    (b'{"url": "file:///etc/passwd"}', "url_invalid"), (b'{"url": "ftp://example.org/x"}', "url_invalid"),
    (b'{"url": 7}', "url_invalid"), (b'{"url": "http://"}', "url_invalid"),
    (b'{"url": "http://example.org/x", "meta": []}', "meta_invalid"),
])
def test_bad_url_uploads_are_refused_at_the_edge(client, raw, code):
    response = post_url(client, raw)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code


def test_url_uploads_are_signed_like_the_multipart_form(client, files):
    response = post_url(client, {"url": files.url("/lora.safetensors")}, secret="not-the-secret")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "signature_mismatch"


# ---------------------------------------------------------------------------------------------------------
# The block adapter


def test_the_block_adapter_makes_the_repo_private_and_opens_a_discussion(tmp_path, hub):
    from gate.config import load_settings
    from gate.hubs.enforcement import enforce_blocks
    from gate.record.db import open_db
    from gate.record.uploads import UploadState, record_upload, transition

    hub.fail_writes = 1  # the first call fails: retried
    settings = load_settings({"data_dir": str(tmp_path / "data"),
                              "huggingface": {"endpoint": hub.endpoint, "block_action": "private"}})
    db = open_db(settings.db_path)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    upload = record_upload(db, "huggingface", {"hub": "huggingface", "model_id": "alice/lora", "version_id": SHA_A},
                           weights, "0" * 64, 1, "lora.safetensors").upload
    transition(db, upload["id"], UploadState.DECIDED, "gate", "decided block",
               {"verdict": "block", "reasons": json.dumps([{"kind": "character", "message": "draws Mario"}])})
    assert enforce_blocks(settings, db) == 1  # the settings call failed, the discussion went through
    db["hub_actions"].update(1, {"next_attempt_at": "2000-01-01"})  # due now rather than after the backoff
    assert enforce_blocks(settings, db) == 1
    assert enforce_blocks(settings, db) == 0  # nothing owed twice
    assert hub.settings_received == [("alice/lora", {"visibility": "private"})]
    [(repo, discussion)] = hub.discussions
    assert repo == "alice/lora" and "draws Mario" in discussion["description"]
    actions = {row["action"]: row for row in db["hub_actions"].rows}
    assert actions["private"]["state"] == "done" and actions["private"]["attempts"] == 2
    journal = [row["action"] for row in db["upload_events"].rows_where("upload_id = ?", [upload["id"]])]
    assert "private failed" in journal and "repo made private" in journal and "discussion #1 opened" in journal


def test_the_block_adapter_is_off_by_default(tmp_path, hub):
    from gate.config import load_settings
    from gate.hubs.enforcement import enforce_blocks
    from gate.record.db import open_db

    settings = load_settings({"data_dir": str(tmp_path / "data"), "huggingface": {"endpoint": hub.endpoint}})
    assert settings.huggingface.block_action == ""
    assert enforce_blocks(settings, open_db(settings.db_path)) == 0
