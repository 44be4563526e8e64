"""End to end over real HTTP: `gate serve` in its own process, a hub delivering a fixture-world LoRA with
`gate deliver`'s client, and the verdict coming back through the status API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from gate.hubs.client import deliver
from tests.conftest import REPO, world_lora
from tests.support import free_port


@pytest.fixture
def served(tmp_path):
    """`gate serve` on the embedded default (no Redis), as `make run` runs it: (base URL, the web process)."""
    port = free_port()
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
    yield base, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def server(served):
    return served[0]


def _poll(url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
        if answer["state"] not in ("received", "scanning"):
            return answer
        time.sleep(0.5)
    raise AssertionError(f"still {answer['state']} after {timeout}s")


def test_a_hub_delivers_a_character_lora_and_gets_its_verdict(served, world, tmp_path):
    server, process = served
    lora = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    status, answer = deliver(f"{server}/v1/uploads", world.path(lora["path"]), "e2e-secret",
                             {"hub": "testhub", "model_id": "m-1", "version_id": "v-1", "title": "cool character"})
    assert status == 202, answer
    first_look = json.loads(urllib.request.urlopen(answer["status_url"], timeout=5).read())
    assert first_look["state"] in ("received", "scanning")  # the first scan loads the models: seconds at least
    assert first_look["progress"]["estimate_basis"] == "no probe has finished on this gate yet"
    final = _poll(answer["status_url"])
    assert "progress" not in final
    assert final["state"] == "decided"
    assert final["verdict"] in ("allow", "quarantine", "block")
    # Its metadata names the character (honest title); the hub's title is screened as well.
    assert any(r["character"] == lora["character"] for r in final["reasons"])
    assert str(tmp_path) not in json.dumps(final)  # no server path (the data directory's) reaches the hub
    page = urllib.request.urlopen(final["evidence_url"]).read().decode()
    assert "_render.png" in page and "_base.png" in page  # renders with the LoRA beside the base renders
    assert "<title>cool character · LoRA Gate evidence</title>" in page  # the hub's title, not the file's hash
    metrics = urllib.request.urlopen(f"{server}/metrics").read().decode()
    assert f'gate_decisions{{verdict="{final["verdict"]}"}} 1' in metrics

    # The server's log: one line per state and stage of the upload, and nothing from the model libraries.
    process.terminate()
    log = process.communicate(timeout=30)[0]
    states = [line.split(" gate.uploads: ", 1)[1].split(" file=")[0] for line in log.splitlines()
              if f"gate.uploads: upload={answer['id']} " in line]
    assert states == [f"upload={answer['id']} state={s}" for s in (
        "received", "scanning stage=screening", "scanning stage=probing", "scanning stage=concluding",
        f"decided verdict={final['verdict']}")], "\n".join(states)
    noise = ("Warning", "warn(", "No LoRA keys", "it/s]", "Loading pipeline components", "torchvision")
    assert not [line for line in log.splitlines() if any(word in line for word in noise)], log[-3000:]


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            found += [int(child) for child in listing.read().split()]
    return found


def _loaded_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "libtorch" in maps.read()


def _wait_state(url: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
        if answer["state"] in states:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"never reached {states}: {answer['state']}")


def _wait_stage(url: str, stage: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
        if answer.get("progress", {}).get("stage") == stage:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"never reached stage {stage}: {answer}")


def test_scans_run_in_a_supervised_worker_process_that_may_die(served, world):
    """The embedded default: the web process never loads torch; its scan worker, killed mid-scan, is restarted
    and the upload is still decided; stopping the server ends the worker too."""
    base, process = served
    first = world_lora(world, kind="style")
    status, answer = deliver(f"{base}/v1/uploads", world.path(first["path"]), "e2e-secret",
                             {"hub": "testhub", "model_id": "m-style", "title": "a style"})
    assert status == 202, answer
    assert _poll(answer["status_url"])["state"] == "decided"
    [worker] = _children(process.pid)
    assert _loaded_torch(worker) and not _loaded_torch(process.pid)

    second = world_lora(world, kind="character", trigger=None, metadata_style="honest")
    status, answer = deliver(f"{base}/v1/uploads", world.path(second["path"]), "e2e-secret",
                             {"hub": "testhub", "model_id": "m-char", "title": "a character"})
    assert status == 202, answer
    # One probe has been timed (the style's), so a scan waiting for or in its probe gets an estimate.
    probing = _wait_stage(answer["status_url"], "probing")["progress"]
    assert probing["ahead"] == 0 and probing["estimate_seconds"] >= 0
    assert probing["estimate_basis"].startswith("median probe time of the last 1 on this gate ("), probing
    os.kill(worker, 9)  # kill -9 mid-scan
    final = _poll(answer["status_url"])
    assert final["state"] == "decided", final
    [restarted] = _children(process.pid)
    assert restarted != worker and not _loaded_torch(process.pid)
    health = json.loads(urllib.request.urlopen(f"{base}/readyz", timeout=5).read())
    assert health["checks"]["queue"] == "ok"

    process.terminate()
    assert process.wait(timeout=30) == 0
    assert not os.path.exists(f"/proc/{restarted}") or open(f"/proc/{restarted}/stat").read().split()[2] == "Z"
