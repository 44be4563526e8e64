"""The back catalogue from the operator's side, with real parts: the real `gate` command in fresh processes,
fixture-world LoRAs rendered by the real (tiny) models, a real redis-server and a real `gate worker` for the
rescan, killed and resumed. A local HTTP server stands in for a remote hub serving LoRA files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO, run_gate, world_lora

LORAS = ("style_sepia_peft", "pebble_sprite_trigger_peft")
RESCAN_LORAS = ("style_sepia_peft", "concept_house_kohya", "pebble_sprite_trigger_peft")
NO_REDIS = {"REDIS_URL": "", "GATE_REDIS_URL": ""}


@contextmanager
def _catalogue_worker(data_dir, tmp_path):
    """A private redis-server and the catalogue's two real workers on `data_dir`, as a deployment splits them:
    `gate worker --queues catalogue` (the record's side, which must never load torch) and a probe worker on
    `catalogue_probe` with a data directory of its own (it never opens the record). Their logs go to
    tmp_path/worker.log and probe-worker.log; yields the environment for `gate` commands and the Redis URL.
    On the way out, the record's worker is checked: torch was never loaded into it."""
    from tests.support import RedisServer, loaded_torch

    redis = RedisServer(tmp_path)
    redis.start()
    env = {**os.environ, "GATE_DATA_DIR": str(data_dir), "REDIS_URL": redis.url}
    with open(tmp_path / "worker.log", "w") as worker_log, open(tmp_path / "probe-worker.log", "w") as probe_log:
        worker = subprocess.Popen([sys.executable, "-m", "gate", "worker", "--queues", "catalogue"], cwd=REPO,
                                  env=env, stdout=worker_log, stderr=subprocess.STDOUT)
        prober = subprocess.Popen([sys.executable, "-m", "gate", "worker", "--queues", "catalogue_probe"], cwd=REPO,
                                  env={**env, "GATE_DATA_DIR": str(tmp_path / "probe-data")}, stdout=probe_log,
                                  stderr=subprocess.STDOUT)
        try:
            yield env, redis.url
            assert worker.poll() is None and not loaded_torch(worker.pid), "the record's worker loaded torch"
            assert not (tmp_path / "probe-data" / "gate.db").exists(), "the probe worker opened a record"
        finally:
            for process in (worker, prober):
                process.kill()
                process.wait(timeout=10)
            redis.stop()


def _query(db_path, sql: str, params=()) -> list[tuple]:
    with sqlite3.connect(db_path, timeout=30) as connection:
        return connection.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def imported(tmp_path_factory, world):
    """A hub's export directory imported (and scanned in-process) into a fresh record."""
    root = tmp_path_factory.mktemp("catalogue-cli")
    export = root / "hub-export"
    export.mkdir()
    for lora_id in LORAS:
        shutil.copy(world.path(world_lora(world, id=lora_id)["path"]), export / f"{lora_id}.safetensors")
    env = {**NO_REDIS, "GATE_DATA_DIR": str(root / "data")}
    result = run_gate("catalogue", "import", str(export), "--hub", "oldhub", "--json", env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, env, json.loads(result.stdout)


def test_import_records_and_scans_a_directory_once(imported):
    root, env, report = imported
    assert report["entries"] == report["created"] == len(LORAS) and report["errors"] == 0
    assert {item["state"] for item in report["items"]} == {"decided"}
    rows = _query(root / "data" / "gate.db", "select source, hub, model_id, verdict from uploads order by model_id")
    assert [(r[0], r[1], r[2]) for r in rows] == [("import", "oldhub", f"{lora}.safetensors") for lora in sorted(LORAS)]
    stored = _query(root / "data" / "gate.db", "select count(*) from catalogue_scans where renders > 0")
    assert stored == [(len(LORAS),)]  # every imported scan keeps its embeddings for screening

    again = run_gate("catalogue", "import", str(root / "hub-export"), "--hub", "oldhub", "--json", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["created"] == 0
    assert _query(root / "data" / "gate.db", "select count(*) from uploads") == [(len(LORAS),)]


def test_import_a_manifest_with_urls_and_bad_entries(imported, tmp_path):
    root, env, _ = imported
    handler = partial(SimpleHTTPRequestHandler, directory=str(root / "hub-export"))
    handler.log_message = lambda *args: None
    hub = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # stands in for a remote hub's file server
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hub.server_address[1]}/style_sepia_peft.safetensors"
        manifest = tmp_path / "export.jsonl"
        manifest.write_text("\n".join([
            json.dumps({"url": url, "hub": "civitai", "model_id": "123", "version_id": "456", "title": "Sepia",
                        "tags": ["style"]}),
            json.dumps({"url": "ftp://example.invalid/x.safetensors", "model_id": "9"}),
            json.dumps({"path": "missing.safetensors", "model_id": "10"}),
            "not json",
        ]) + "\n")
        first = run_gate("catalogue", "import", str(manifest), "--no-scan", "--json", env=env)
        second = run_gate("catalogue", "import", str(manifest), "--no-scan", "--json", env=env)
    finally:
        hub.shutdown()
    assert first.returncode == 3 and "Traceback" not in first.stderr
    report = json.loads(first.stdout)
    assert report["created"] == 1 and report["errors"] == 3
    codes = sorted(item["error"]["code"] for item in report["items"] if "error" in item)
    assert codes == ["import_entry_invalid", "import_fetch_failed", "import_url_invalid"]
    assert json.loads(second.stdout)["created"] == 0
    rows = _query(root / "data" / "gate.db", "select hub, model_id, version_id, state from uploads where hub = ?",
                  ["civitai"])
    assert rows == [("civitai", "123", "456", "received")]


def test_rescan_in_process_without_redis(imported):
    root, env, _ = imported
    result = run_gate("rescan", "--all", "--limit", "1", "--verdict", "allow", "--json", env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["state"] == "finished" and report["counts"]["done"] == report["total"] == 1
    assert sum(report["transitions"].values()) == 1
    event = _query(root / "data" / "gate.db", "select actor, detail from upload_events where action like 'rescanned%'")
    assert len(event) == 1 and json.loads(event[0][1])["run"] == report["run"]


@pytest.fixture
def decided_earlier(tmp_path, world):
    """A record whose uploads were decided by an earlier probe set version (the state a rescan starts from)."""
    import hashlib

    from gate.record.db import open_db
    from gate.record.uploads import UploadState, record_upload, store_file, transition

    db = open_db(tmp_path / "data" / "gate.db")
    for lora_id in RESCAN_LORAS:
        spool = tmp_path / f"{lora_id}.spool"
        shutil.copy(world.path(world_lora(world, id=lora_id)["path"]), spool)
        sha256 = hashlib.sha256(spool.read_bytes()).hexdigest()
        size = spool.stat().st_size
        stored = store_file(spool, tmp_path / "data" / "uploads", sha256)
        upload = record_upload(db, "direct", {"hub": "oldhub", "model_id": lora_id}, stored, sha256, size,
                               f"{lora_id}.safetensors").upload
        transition(db, upload["id"], UploadState.DECIDED, "gate", "decided allow",
                   {"verdict": "allow", "reasons": "[]", "matches": "[]", "probe_set": "fixture-v0@earlier"})
    db.conn.close()
    return tmp_path / "data"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_rescan_on_the_catalogue_queue_survives_a_killed_cli(decided_earlier, tmp_path):
    from tests.support import wait

    db_path = decided_earlier / "gate.db"
    with _catalogue_worker(decided_earlier, tmp_path) as (env, _):
        cli = subprocess.Popen([sys.executable, "-m", "gate", "rescan", "--hub", "oldhub", "--rate", "1/min"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait(lambda: _query(db_path, "select count(*) from rescan_items where state = 'done'")[0][0] >= 1,
              1200, "no rescan item finished")
        cli.send_signal(signal.SIGKILL)  # the operator's terminal goes away mid-run
        cli.wait(timeout=10)
        run_id, total = _query(db_path, "select id, total from rescan_runs")[0]
        assert total == len(RESCAN_LORAS)  # every upload decided by the earlier probe set

        resumed = subprocess.run([sys.executable, "-m", "gate", "rescan", "--resume", run_id, "--rate", "60/min",
                                  "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        report = json.loads(resumed.stdout)
        assert report["run"] == run_id and report["state"] == "finished"
        assert report["counts"]["done"] == total and sum(report["transitions"].values()) == total
        assert "rescan " + run_id in resumed.stderr  # the progress line
        # Nothing was redone: each upload was rescanned exactly once in this run, by the catalogue worker.
        per_upload = _query(db_path, "select upload_id, count(*) from upload_events where action like 'rescanned%' "
                                     "and json_extract(detail, '$.run') = ? group by upload_id", [run_id])
        assert len(per_upload) == total and {count for _, count in per_upload} == {1}
        probe_sets = _query(db_path, "select distinct probe_set from uploads")
        assert len(probe_sets) == 1 and probe_sets[0][0].startswith("fixture-v3@")
        assert "gate.catalogue.rescan.rescan_concluded" in (tmp_path / "worker.log").read_text()
        assert "probes.jobs.probe_upload" in (tmp_path / "probe-worker.log").read_text()


def test_a_rescan_keeps_a_moderators_decision(decided_earlier):
    db_path = decided_earlier / "gate.db"
    with sqlite3.connect(db_path) as db:  # a moderator blocked the first upload; the rescan will not say block
        upload_id = db.execute("select id from uploads order by created_at limit 1").fetchone()[0]
        db.execute("update uploads set verdict = 'block', reviewed_by = 'alice' where id = ?", [upload_id])
    env = {**NO_REDIS, "GATE_DATA_DIR": str(decided_earlier)}
    result = run_gate("rescan", "--verdict", "block", "--json", env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["total"] == 1 and report["transitions"] == {"block -> block": 1}, report["counts"]
    verdict, events = _query(db_path, "select verdict, (select group_concat(action, '|') from upload_events e "
                                      "where e.upload_id = u.id) from uploads u where id = ?", [upload_id])[0]
    assert verdict == "block" and "kept (decided by alice)" in events
    assert _query(db_path, "select count(*) from outbox where upload_id = ?", [upload_id])[0][0] == 0
    assert not (decided_earlier / "evidence" / upload_id).exists()  # nothing replaced what the moderator saw


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_character_registered_on_the_web_is_screened_by_the_likelihood_probe_on_the_catalogue_worker(
        imported, world, tmp_path):
    from gate.config import load_settings
    from gate.record.audit import Actor
    from gate.record.db import open_db
    from gate.registry import rights
    from tests.support import wait

    root, _, _ = imported
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)  # the module's record stays as it was for the other tests
    db_path = data / "gate.db"
    sprite = "pebble_sprite_trigger_peft.safetensors"
    assert _query(db_path, "select verdict from uploads where model_id = ?", [sprite]) == [("allow",)]
    with _catalogue_worker(data, tmp_path) as (_, redis_url):
        settings = load_settings({"data_dir": str(data), "redis_url": redis_url})
        character = next(c for c in world.characters() if c["id"] == "pebble_sprite")
        references = [(p, world.path(p).read_bytes()) for p in character["references"]]
        registered = rights.register(open_db(settings.db_path), settings, Actor("pebbles", "rights_holder"),
                                     character["rights_holder"], name=character["name"], policy="block",
                                     references=references)
        # The screening is recorded as it starts, then one catalogue job per upload counts itself done.
        wait(lambda: _query(db_path, "select count(*) from screenings where cause = 'registered: likelihood' "
                                      "and screened > 0 and done = screened") == [(1,)], 600,
              "the likelihood screening never finished")
        screened, hits, changed = _query(db_path, "select screened, hits, changed from screenings "
                                                  "where cause = 'registered: likelihood'")[0]
        assert screened == len(LORAS) and hits == changed == 1
        assert _query(db_path, "select verdict from uploads where model_id = ?", [sprite]) == [("block",)]
        reasons = json.loads(_query(db_path, "select reasons from uploads where model_id = ?", [sprite])[0][0])
        assert reasons[-1]["kind"] == "likelihood_match" and reasons[-1]["character"] == registered.id
        assert _query(db_path, "select verdict from uploads where model_id = ?",
                      ["style_sepia_peft.safetensors"]) == [("allow",)]
        log = (tmp_path / "worker.log").read_text()
        assert "gate.catalogue.screening.screen_job" in log
        assert log.count("gate.catalogue.screening.likelihood_measured") >= screened
        # The new references were embedded by the probe worker (the record's worker has no embedder).
        assert "probes.jobs.embed_references" in (tmp_path / "probe-worker.log").read_text()
