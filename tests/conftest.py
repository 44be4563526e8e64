"""Shared fixtures: the intake corpus and the fixture world (built once per session from fixtures/), the web
app, its test client and the CLI runner, the probe engine and scanner, and the service on real Redis and real
processes. Helpers that are not fixtures are in tests/support.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fixtures import intake_corpus
from tests.support import SECRET, UPLOAD_SECRET, Hub, RedisServer, free_port, wait

pytest_plugins = ["tests.skipped"]  # the loud list of what a run skipped, and why

REPO = Path(__file__).resolve().parent.parent

# The suite runs on the fixture world, which only the demo profile falls back to; set in the environment so that
# the gate, worker and CLI processes tests start inherit it. Tests of the production profile set their own.
os.environ["GATE_PROFILE"] = "demo"

# The suite runs in pytest-xdist workers, one a core (pyproject's addopts): one torch thread each, for the
# processes they start too, so that they do not fight over the cores. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """The intake corpus: valid LoRAs of every format and family, and one hostile file per failure kind."""
    target = tmp_path_factory.mktemp("intake-corpus")
    intake_corpus.build(target)
    return target


@pytest.fixture(scope="session")
def corpus(corpus_dir) -> list[dict]:
    return json.loads((corpus_dir / "corpus.json").read_text())


def run_gate(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `gate` command in a fresh process, as a user or a script would."""
    return subprocess.run(
        [sys.executable, "-m", "gate", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def gate_cli():
    return run_gate


# ---------------------------------------------------------------------------------------------------------
# The fixture world, loaded once per session: tests render with the real (tiny) models on CPU.

@pytest.fixture(scope="session")
def world():
    from gate.config import load_settings
    from gate.registry.world import World

    return World.load(load_settings().world_dir)


@pytest.fixture(scope="session", autouse=True)
def shared_render_cache(tmp_path_factory):
    """Base renders are cached on disk; sharing the cache with the gate processes tests start keeps the
    suite from rendering the same base probes in every process."""
    # One cache for the run, shared by the xdist workers (their base temp dirs share a parent): its files are
    # written aside and renamed, as for workers sharing a cache in production.
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "render-cache"
    cache.mkdir(exist_ok=True)
    previous = os.environ.get("GATE_CACHE_DIR")
    os.environ["GATE_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("GATE_CACHE_DIR", None)
    else:
        os.environ["GATE_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def engine(shared_render_cache):
    from gate.config import load_settings
    from probes.engine import ProbeEngine
    from probes.probe_set import load_probe_set

    settings = load_settings()
    return ProbeEngine(settings.base_model, settings.embedder, load_probe_set(settings.probe_set),
                       cache_dir=settings.base_render_cache)


@pytest.fixture(scope="session")
def scan_settings(tmp_path_factory):
    from gate.config import load_settings

    return load_settings({"data_dir": str(tmp_path_factory.mktemp("gate-data"))})


@pytest.fixture(scope="session")
def scanner(scan_settings, engine, world):
    """A scanner on a fresh record seeded with the world's registered characters."""
    from gate.detection.scanner import Scanner
    from gate.record.db import open_db
    from gate.registry.world import seed_registry

    db = open_db(scan_settings.db_path)
    seed_registry(db, world, scan_settings.references_dir)
    return Scanner(scan_settings, db, engine)


def world_lora(world, **wanted) -> dict:
    """The first LoRA in the world's manifest whose fields have the wanted values."""
    for lora in world.loras():
        if all(lora.get(key) == value for key, value in wanted.items()):
            return lora
    raise LookupError(f"no fixture LoRA with {wanted}")


@pytest.fixture
def make_app(tmp_path):
    """Build the web gate on this test's data directory (tmp_path/data), with settings overrides: the one way
    tests make an app."""
    def make(**overrides):
        from gate.app import create_app

        return create_app({"data_dir": str(tmp_path / "data"), "upload_secret": UPLOAD_SECRET, **overrides})

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def service(tmp_path):
    """Redis, the gate (web) and a hub; tests start the workers they need."""
    yield from _service(tmp_path, {})


WORKER_TOKEN = "worker-token-for-tests"


@pytest.fixture
def remote_service(tmp_path):
    """The same, with the gate serving its files to workers of other machines (GATE_PUBLIC_URL, a worker
    token): a probe worker with GATE_WORKER_SHARED_DISK=0 then fetches everything over HTTP."""
    port = free_port()
    yield from _service(tmp_path, {"GATE_PUBLIC_URL": f"http://127.0.0.1:{port}", "GATE_WORKER_TOKEN": WORKER_TOKEN},
                        port)


def _service(tmp_path, extra: dict, port: int | None = None):
    redis = RedisServer(tmp_path)
    redis.start()
    hub = Hub()
    port = port or free_port()
    env = {**os.environ, "REDIS_URL": redis.url, "GATE_DATA_DIR": str(tmp_path / "data"),
           "GATE_UPLOAD_SECRET": SECRET, "GATE_CALLBACK_URL": hub.url, **extra}
    processes: list[subprocess.Popen] = []

    def spawn(*args: str, log: str, extra_env: dict | None = None) -> subprocess.Popen:
        out = open(tmp_path / f"{log}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "gate", *args], cwd=REPO, env={**env, **(extra_env or {})},
                                   stdout=out, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    web = spawn("serve", "--port", str(port), log="serve")
    base = f"http://127.0.0.1:{port}"
    wait(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, 60, "gate serve did not start")

    class Service:
        pass

    service = Service()
    service.base, service.redis, service.hub, service.spawn, service.web = base, redis, hub, spawn, web
    service.logs = tmp_path
    yield service
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    hub.shutdown()
    if redis.process.poll() is None:
        redis.stop()
    # every callback the hub got is what docs/reference/schemas/answers.schema.json documents
    assert not hub.undocumented, hub.undocumented[:5]

