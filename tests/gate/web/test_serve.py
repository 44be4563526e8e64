"""End to end over real HTTP: `gate serve` in its own process, a hub delivering a fixture-world LoRA with
`gate deliver`'s client, and the verdict coming back through the status API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from gate.hubs.client import deliver
from tests.conftest import REPO, world_lora


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "GATE_DATA_DIR": str(tmp_path / "data"), "GATE_UPLOAD_SECRET": "e2e-secret"}
    process = subprocess.Popen([sys.executable, "-m", "gate", "serve", "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"gate serve did not start: {process.stdout.read()[-2000:]}")
    yield base
    process.terminate()
    process.wait(timeout=20)


def _poll(url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
        if answer["state"] not in ("received", "scanning"):
            return answer
        time.sleep(0.5)
    raise AssertionError(f"still {answer['state']} after {timeout}s")


def test_a_hub_delivers_a_character_lora_and_gets_its_verdict(server, world):
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    status, answer = deliver(f"{server}/v1/uploads", world.path(lora["path"]), "e2e-secret",
                             {"hub": "testhub", "model_id": "m-1", "version_id": "v-1", "title": "cool character"})
    assert status == 202, answer
    final = _poll(answer["status_url"])
    assert final["state"] == "decided"
    assert final["verdict"] in ("allow", "quarantine", "block")
    # Its metadata names the character (honest title); the hub's title is screened as well.
    assert any(r["character"] == lora["character"] for r in final["reasons"])
    page = urllib.request.urlopen(final["evidence_url"]).read().decode()
    assert "_render.png" in page and "_base.png" in page  # renders with the LoRA beside the base renders
    metrics = urllib.request.urlopen(f"{server}/metrics").read().decode()
    assert f'gate_decisions{{verdict="{final["verdict"]}"}} 1' in metrics
