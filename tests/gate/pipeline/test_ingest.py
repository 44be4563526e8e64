"""Hugging Face webhooks end to end with real parts: real Redis, real `gate serve` and `gate worker` processes,
real HTTP, the Hub stand-in (tests/gate/hubs/hub_standin.py, the only stand-in) serving a fixture-world LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import REPO, world_lora
from tests.gate.hubs.hub_standin import HubStandIn
from tests.gate.web.test_huggingface import HOOK_SECRET, SHA_A, payload
from tests.support import final_state, status, wait

pytestmark = pytest.mark.slow


@pytest.fixture
def hub():
    hub = HubStandIn().start()
    yield hub
    hub.stop()


@pytest.fixture
def hf_service(hub, monkeypatch, request):
    """The service (test_queues' fixture) with its processes told about the Hub stand-in."""
    monkeypatch.setenv("GATE_HUGGINGFACE_WEBHOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("GATE_HUGGINGFACE_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("GATE_HUGGINGFACE_BLOCK_ACTION", "private")
    return request.getfixturevalue("service")


def _hook(gate, body: dict) -> dict:
    request = urllib.request.Request(f"{gate.base}/webhooks/huggingface", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-Webhook-Secret": HOOK_SECRET})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
        return json.loads(answer.read())


def _fetched(url: str, timeout: float = 120) -> dict:
    answer = {}

    def done() -> bool:
        answer.update(status(url))
        return answer["state"] not in ("received", "fetching")

    wait(done, timeout, "the delivery was never fetched")
    return answer


def test_a_hub_webhook_ends_in_a_verdict(hf_service, hub, world):
    hf_service.spawn("worker", log="worker")
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    hub.add("alice/ultra-lora", SHA_A, {"README.md": b"---\ntitle: x\n---\n",
                                         "lora/ultra.safetensors": world.path(lora["path"]).read_bytes()},
            card={"title": lora["title"]}, tags=["lora", "text-to-image"])
    answer = _hook(hf_service, payload("alice/ultra-lora", SHA_A))
    delivery = _fetched(answer["status_url"])
    assert delivery["state"] == "fetched", delivery
    [upload] = delivery["uploads"]
    assert upload["model_id"] == "alice/ultra-lora" and upload["version_id"] == SHA_A
    final = final_state(f"{hf_service.base}/v1/uploads/{upload['id']}", hf_service, timeout=1200)  # CPU rendering
    assert final["state"] == "decided", final
    assert any(r["character"] == lora["character"] for r in final["reasons"])
    if final["verdict"] == "block":  # the adapter is on in this service: the repo is made private, with a note
        wait(lambda: hub.settings_received and hub.discussions, 60, "the block adapter did not act")
        assert hub.settings_received == [("alice/ultra-lora", {"visibility": "private"})]
        assert upload["id"] in hub.discussions[0][1]["description"]
    else:
        assert hub.settings_received == []


def test_a_blocked_hub_upload_makes_the_repo_private_and_opens_a_discussion(hf_service, hub, world, tmp_path):
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    env = {**os.environ, "GATE_DATA_DIR": str(tmp_path / "data")}
    inspected = subprocess.run([sys.executable, "-m", "gate", "inspect", "--json", str(world.path(lora["path"]))],
                               cwd=REPO, capture_output=True, text=True, env=env)
    tensor_hash = json.loads(inspected.stdout)["tensor_hash"]
    added = subprocess.run([sys.executable, "-m", "gate", "blocklist", "add", tensor_hash, "--reason", "takedown"],
                           cwd=REPO, capture_output=True, text=True, env=env)
    assert added.returncode == 0, added.stderr
    hf_service.spawn("worker", "--queues", "intake", log="worker-intake")  # blocklisted: decided without rendering
    hub.fail_writes = 1  # the Hub refuses the first write: retried
    hub.add("mallory/reupload", SHA_A, {"ultra.safetensors": world.path(lora["path"]).read_bytes()})
    delivery = _fetched(_hook(hf_service, payload("mallory/reupload", SHA_A))["status_url"])
    [upload] = delivery["uploads"]
    final = final_state(f"{hf_service.base}/v1/uploads/{upload['id']}", hf_service, timeout=120)
    assert final["verdict"] == "block", final
    wait(lambda: hub.settings_received and hub.discussions, 90, "the block adapter did not act")
    assert hub.settings_received == [("mallory/reupload", {"visibility": "private"})]
    assert upload["id"] in hub.discussions[0][1]["description"]
    report = subprocess.run([sys.executable, "-m", "gate", "status", upload["id"], "--json"], cwd=REPO,
                            capture_output=True, text=True, env=env)
    journal = "\n".join(json.loads(report.stdout)["journal"])
    assert "repo made private" in journal and "discussion #1 opened" in journal


def test_a_webhook_while_redis_is_down_is_fetched_when_it_is_back(hf_service, hub, corpus_dir):
    hub.add("mallory/pickle", SHA_A, {"model.bin": (corpus_dir / "pickle_disguised.safetensors").read_bytes()})
    hf_service.redis.stop()
    answer = _hook(hf_service, payload("mallory/pickle", SHA_A))  # still 202: recorded
    assert status(answer["status_url"])["state"] == "received"
    hf_service.redis.start()  # empty: the fetch job was never queued
    hf_service.spawn("worker", "--queues", "intake", log="worker-after")
    delivery = _fetched(answer["status_url"])
    [upload] = delivery["uploads"]
    final = final_state(f"{hf_service.base}/v1/uploads/{upload['id']}", hf_service, timeout=60)
    assert final["state"] == "refused" and final["error"]["code"] == "format_pickle"
