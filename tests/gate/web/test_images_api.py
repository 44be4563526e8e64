"""POST /v1/datasets and /v1/images end to end over real HTTP: `gate serve` on the embedded default, signed
deliveries of real zips and images from the fixture world's held-back drawings, the record's side and the
scan worker process doing the work, as a hub integrating them would see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from fixtures import image_truth
from tests.conftest import REPO, run_gate
from tests.support import checked_deliver, checked_get, documented, free_port, wait


@pytest.fixture(scope="module")
def gate_url(tmp_path_factory):
    """A `gate serve` on the embedded default: its base `url` and its `data` directory."""
    data = tmp_path_factory.mktemp("images-api")
    port = free_port()
    env = {**os.environ, "GATE_DATA_DIR": str(data), "GATE_UPLOAD_SECRET": "img-secret",
           "GATE_IMAGES_WAIT_SECONDS": "120",  # long enough on a loaded CI machine for the 200 path
           "GATE_FETCH_ALLOW_PRIVATE_ADDRESSES": "1"}  # the image URLs are served on loopback
    process = subprocess.Popen([sys.executable, "-m", "gate", "serve", "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, 60, "gate serve did not start")
    yield SimpleNamespace(url=base, data=data)
    process.terminate()
    process.wait(timeout=30)


def _held_back(kind: str, character: str | None = None) -> list:
    return [e["path"] for e in image_truth.load(split="held_back", kinds=(kind,))
            if character is None or e["character"] == character]


def _zip(path, files, extra: dict | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            archive.write(file, file.name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def test_a_training_set_with_a_characters_drawings_is_answered_with_its_verdict(gate_url, tmp_path):
    drawings = _held_back("character", "ultraman")[:8]
    archive = _zip(tmp_path / "set.zip", drawings + _held_back("generic")[:32],
                   {"captions.jsonl": json.dumps({"file": drawings[0].name, "caption": "a hero"}) + "\n"})
    status, answer = checked_deliver(f"{gate_url.url}/v1/datasets", archive, "img-secret",
                             {"hub": "civitai-test", "model_id": "train-1", "uploader": "someone"})
    assert status == 200, answer
    assert answer["state"] == "decided" and answer["verdict"] in ("quarantine", "block") and not answer["duplicate"]
    assert answer["counts"] == {"images": 40, "matched": answer["counts"]["matched"], "embedded": 40, "refused": 0}
    [reason] = [r for r in answer["reasons"] if r["kind"] == "image_match"]
    assert reason["character"] == "ultraman"
    assert {m["name"] for m in answer["matches"] if m["character"] == "ultraman"} <= {d.name for d in drawings}
    # Where in each image it matched: the whole (null) or one of its crops, inside the 32 px drawing.
    regions = [m["region"] for m in answer["matches"]]
    assert all(r is None or (0 <= r[0] < r[2] <= 32 and 0 <= r[1] < r[3] <= 32) for r in regions), regions
    assert any(r is not None for r in regions)  # some drawings are found by a crop (a small figure, a portrait)
    # ... and the part of the reference sheet each resembled, in the sheet's pixels (null: the whole sheet).
    sheets = [m["reference_region"] for m in answer["matches"]]
    assert all(r is None or (0 <= r[0] < r[2] and 0 <= r[1] < r[3]) for r in sheets), sheets
    page = urllib.request.urlopen(answer["evidence_url"]).read().decode()
    assert "Ultraman" in page and "image_00000.png" in page
    assert checked_get(answer["status_url"])["verdict"] == answer["verdict"]

    again_status, again = checked_deliver(f"{gate_url.url}/v1/datasets", archive, "img-secret",
                                  {"hub": "civitai-test", "model_id": "train-1", "uploader": "someone"})
    assert again_status == 200 and again["id"] == answer["id"] and again["duplicate"]

    # Some of the same drawings in a new set: answered from the record's vectors, nothing embedded again.
    known = _zip(tmp_path / "known.zip", drawings[:4] + _held_back("generic")[:4])
    status, repeat = checked_deliver(f"{gate_url.url}/v1/images", known, "img-secret",
                             {"hub": "civitai-test", "model_id": "gen"})
    assert status == 200 and repeat["id"] != answer["id"] and repeat["counts"]["embedded"] == 0
    assert repeat["state"] == "decided"

    metrics = urllib.request.urlopen(f"{gate_url.url}/metrics").read().decode()
    assert 'gate_image_sets{kind="dataset",state="decided"} 1' in metrics
    assert f'gate_image_decisions{{kind="dataset",verdict="{answer["verdict"]}"}} 1' in metrics

    shown = run_gate("datasets", "status", answer["id"], env={"GATE_DATA_DIR": str(gate_url.data)})
    assert shown.returncode == 0 and shown.stdout.startswith(f"{answer['id']} (dataset): decided, verdict ")
    assert "ultraman" in shown.stdout and "{" not in shown.stdout


def test_one_generated_image_and_a_hostile_archive(gate_url, tmp_path):
    status, one = checked_deliver(f"{gate_url.url}/v1/images", _held_back("generic")[100], "img-secret",
                                  {"model_id": "m-7"})
    assert status == 200 and one["state"] == "decided" and one["counts"]["images"] == 1
    assert one["verdict"] == "allow" and one["reasons"][0]["kind"] == "nothing_shown"

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../escape.png", b"x")
    status, refused = checked_deliver(f"{gate_url.url}/v1/datasets", evil, "img-secret", {"model_id": "evil"})
    assert status == 200 and refused["state"] == "refused"
    assert refused["error"]["code"] == "bundle_path_unsafe"


def test_unsigned_deliveries_are_refused(gate_url, tmp_path):
    request = urllib.request.Request(f"{gate_url.url}/v1/images", b"--x--\r\n",
                                     {"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (400, 401) and "error" in json.loads(refused.value.read())


def test_preview_images_with_an_upload_are_evidence_in_its_decision(gate_url, tmp_path):
    """A clean style LoRA whose hub page shows Ultraman: the probes find nothing, the previews do."""
    from gate.record.db import open_db

    folder = REPO / "fixtures" / "world" / "images" / "held_back"
    previews = [folder / f"ultraman_{n:02d}.png" for n in (0, 2, 4, 6)]
    junk = tmp_path / "not-an-image.png"
    junk.write_bytes(b"GIF89a but not really")
    lora = REPO / "fixtures" / "world" / "loras" / "style_sepia_peft.safetensors"
    status, answer = checked_deliver(f"{gate_url.url}/v1/uploads", lora, "img-secret", {"model_id": "sepia-previews"},
                             previews=[*previews, junk])
    assert status == 202, answer
    deadline = time.time() + 300
    while (final := checked_get(answer["status_url"]))["state"] != "decided":
        assert time.time() < deadline, final
        time.sleep(0.5)
    [reason] = [r for r in final["reasons"] if r["kind"] == "preview_match"]
    assert reason["character"] == "ultraman" and final["verdict"] in ("quarantine", "block")
    assert reason["message"].startswith("preview images: ") and set(reason["previews"]) <= {p.name for p in previews}
    assert not any(r["kind"] in ("visual_match", "likelihood_match") for r in final["reasons"])  # the probes missed
    # Each preview that shows him, beside the reference it came closest to, with its score.
    assert {m["preview"] for m in reason["matched"]} == set(reason["previews"])
    his = {Path(r["path"]).name for r in open_db(gate_url.data / "gate.db")["character_references"].rows_where(
        "character_id = 'ultraman'")}
    assert all(m["score"] > 0.9 and m["reference"] in his for m in reason["matched"]), (reason["matched"], his)
    page = urllib.request.urlopen(final["evidence_url"]).read().decode()
    assert "The hub's preview images" in page and "<b>shows Ultraman</b>" in page and "preview_00.png" in page
    assert "_reference.png" in page and "the closest is beside it" in page
    rows = list(open_db(gate_url.data / "gate.db")["upload_previews"].rows_where("upload_id = ?", [answer["id"]],
                                                                                  order_by="position"))
    assert [r["refused"] for r in rows] == [None, None, None, None, "image_format"]


def test_a_list_of_image_parts_is_one_set_and_sent_again_is_the_same_set(gate_url):
    drawings = [e["path"] for e in image_truth.load(split="held_back") if e["character"] == "totoro"][:6]
    files = drawings + _held_back("generic")[40:50]
    status, answer = checked_deliver(f"{gate_url.url}/v1/images", None, "img-secret", {"model_id": "gallery-1"},
                             images=files)
    assert status == 200 and answer["counts"]["images"] == 16, answer
    assert any(r.get("character") == "totoro" for r in answer["reasons"]), answer["reasons"]
    again_status, again = checked_deliver(f"{gate_url.url}/v1/images", None, "img-secret", {"model_id": "gallery-1"},
                                  images=files)
    assert again_status == 200 and again["id"] == answer["id"] and again["duplicate"]
    both = checked_deliver(f"{gate_url.url}/v1/images", files[0], "img-secret", {"model_id": "both"}, images=files[:2])
    assert both[0] == 400 and both[1]["error"]["code"] == "multipart_invalid"


def _signed_json(url: str, body: dict) -> tuple[int, dict]:
    import hashlib

    from gate.hubs.signatures import DIGEST_HEADER, sign

    raw = json.dumps(body).encode()
    request = urllib.request.Request(url, raw, {"Content-Type": "application/json", "X-Gate-Signature":
                                                sign(raw, "img-secret", int(time.time())),
                                                DIGEST_HEADER: hashlib.sha256(raw).hexdigest()})
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return answer.status, documented(json.loads(answer.read()), "image_set")
    except urllib.error.HTTPError as error:
        return error.code, documented(json.loads(error.read()), "error_answer")


def test_a_list_of_image_urls_is_fetched_under_the_url_rules_and_screened(gate_url):
    """A hub names a training set's images by URL (served here on loopback): fetched on the queue, packed into
    one set and judged; a URL that fails is refused alone, with its code; a URL the gate never fetches (another
    scheme) refuses the request at once."""
    import functools
    import http.server
    import threading

    folder = REPO / "fixtures" / "world" / "images" / "held_back"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        urls = [f"{base}/mario_{n:02d}.png" for n in range(8)] + [f"{base}/generic_{n:03d}.png" for n in range(12)]
        status, answer = _signed_json(f"{gate_url.url}/v1/datasets", {"urls": [*urls, f"{base}/missing.png"],
                                                                      "meta": {"model_id": "by-url"}})
        assert status == 200 and answer["state"] == "decided", answer
        assert answer["counts"]["images"] == 20 and answer["counts"]["embedded"] >= 0
        assert [r["code"] for r in answer["refused"]] == ["fetch_not_found"]
        assert any(r.get("character") == "mario" for r in answer["reasons"]), answer["reasons"]
        status, bad = _signed_json(f"{gate_url.url}/v1/datasets", {"urls": [urls[0], "file:///etc/passwd"]})
        assert status == 400 and bad["error"]["code"] == "url_invalid"
        status, empty = _signed_json(f"{gate_url.url}/v1/datasets", {"urls": []})
        assert status == 400 and empty["error"]["code"] == "urls_invalid"
    finally:
        server.shutdown()
