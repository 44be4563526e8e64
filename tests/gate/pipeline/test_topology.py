"""Several machines played on one: the web gate and a record worker share the record; two probe workers each have
their own empty data directory, cache and HOME, may not read the gate's paths, and reach the gate only through
Redis and its HTTP API (the upload's file, the registry snapshot, reference images by sha256).

They must decide as one box does (the in-process scanner on the same world), pick up a character registered
while they run, and decide an upload whose probe worker was killed mid-job exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

from tests.conftest import REPO
from tests.support import deliver_upload, final_state, needs_redis, wait, without_torch

pytestmark = needs_redis

# A character drawn for any prompt (block), one drawn for its trigger with its metadata stripped (quarantine) and
# a style with misleading metadata (allow): each verdict, for a test that must stay short on two CPU cores.
# All 20 fixture LoRAs go through the same topology in benchmarks/topology.py.
LORAS = ("ultraman_any_kohya", "doraemon_trigger_kohya", "style_neon_peft")


def gate_cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gate", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "GATE_DATA_DIR": str(service.logs / "data"),
                               "REDIS_URL": service.redis.url}, timeout=300)


def test_two_probe_workers_that_share_nothing_decide_as_one_box_does(remote_service, world, scanner, tmp_path):
    service = remote_service
    service.spawn("worker", "--queues", "intake,catalogue", log="worker-record", extra_env=without_torch(tmp_path))
    probers = {}
    for name in ("a", "b"):
        home = tmp_path / f"machine-{name}"
        probers[name] = service.spawn("worker", "--queues", "probe,catalogue_probe", "--name", f"probe-{name}",
                                      log=f"worker-{name}", extra_env={
                                          "GATE_DATA_DIR": str(home / "data"), "GATE_CACHE_DIR": str(home / "cache"),
                                          "HOME": str(home / "home"), "GATE_WORKER_SHARED_DISK": "0"})
    loras = {lora["id"]: lora for lora in world.loras()}
    answers = {lora_id: deliver_upload(service, world.path(loras[lora_id]["path"]), f"m-{lora_id}")
               for lora_id in LORAS}

    # Kill -9 whichever probe worker takes the first job while it is in it; the other carries on alone.
    first = answers[LORAS[0]]["id"]
    wait(lambda: any(f"({first}-g0-probe)" in (service.logs / f"worker-{n}.log").read_text() for n in probers),
         180, "no probe worker took the first job")
    victim = next(n for n in probers if f"({first}-g0-probe)" in (service.logs / f"worker-{n}.log").read_text())
    probers[victim].send_signal(signal.SIGKILL)
    probers[victim].wait(timeout=10)

    finals = {lora_id: final_state(answer["status_url"], service, timeout=420) for lora_id, answer in answers.items()}
    for lora_id, final in finals.items():
        path = world.path(loras[lora_id]["path"])
        one_box = scanner.scan(path, filename=path.name)
        assert final["state"] == "decided", (lora_id, final)
        assert final["verdict"] == one_box.verdict, (lora_id, final, one_box.to_dict())
        assert sorted(r["kind"] for r in final["reasons"]) == \
            sorted(r["kind"] for r in one_box.to_dict()["reasons"]), lora_id
        assert final["registry"]["characters"] == 11  # decided on the whole registry's evidence, and says so
        if loras[lora_id]["kind"] == "character":  # the likelihood probe's evidence, measured from fetched files
            assert any(r["kind"] == "likelihood_match" and r.get("character") == loras[lora_id]["character"]
                       for r in final["reasons"]), (lora_id, final["reasons"])
    report = json.loads(gate_cli(service, "status", first, "--json").stdout)
    assert sum(" -> decided)" in line for line in report["journal"]) == 1, report["journal"]
    assert report["generation"] >= 1  # the killed worker's job was restarted, not lost

    # A character registered while the probe workers run: the next scan measures it.
    knight = next(c for c in world.characters() if c["id"] == "moss_knight")
    added = gate_cli(service, "characters", "add", knight["name"], "--rights-holder", "Test Studio", "--policy",
                     "block", "--id", knight["id"], *[arg for ref in knight["references"][:4]
                                                      for arg in ("--ref", str(world.path(ref)))])
    assert added.returncode == 0, added.stderr
    answer = deliver_upload(service, world.path(loras["moss_knight_any_kohya"]["path"]), "m-knight")
    final = final_state(answer["status_url"], service, timeout=300)
    assert final["registry"]["characters"] == 12 and final["registry"]["version"] != finals[LORAS[0]]["registry"][
        "version"]
    assert final["verdict"] in ("block", "quarantine"), final
    assert any(r.get("character") == "moss_knight" for r in final["reasons"]), final["reasons"]
    survivor = next(n for n in probers if n != victim)
    machine = tmp_path / f"machine-{survivor}"
    assert not (machine / "data" / "gate.db").exists()
    # What it used, it fetched: reference images by content hash, and the snapshots the gate named.
    assert len([p for p in (machine / "cache" / "blobs").rglob("*") if p.is_file()]) >= 50
    assert (machine / "cache" / "registry" / final["registry"]["version"] / "registry.json").is_file()

    # Its numbers reach the gate's /metrics through Redis: jobs, cache misses, the registry version.
    def metrics() -> str:
        return urllib.request.urlopen(f"{service.base}/metrics", timeout=10).read().decode()

    probed = rf'gate_worker_jobs_total\{{worker="probe-{survivor}",job="probe_upload"\}} [1-9]'
    wait(lambda: re.search(probed, metrics()), 15, "the probe worker's numbers never reached /metrics")
    text = metrics()
    assert re.search(rf'gate_worker_cache_misses_total\{{worker="probe-{survivor}",cache="blob"\}} [1-9]', text)
    assert f'gate_worker_registry{{worker="probe-{survivor}",version="{final["registry"]["version"]}"}} 1' in text
    overview = gate_cli(service, "status").stdout
    assert f"probe-{survivor}: " in overview and f"registry {final['registry']['version']}" in overview, overview
