"""Helpers the tests share (not fixtures: those are in conftest.py): free loopback ports, waiting, a private
redis-server, a hub's callback endpoint, signed uploads through the Flask test client, a process without
torch, and synthetic registries of reference views."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from gate.detection.matching import References
from gate.hubs import signatures
from gate.hubs.client import deliver, multipart
from gate.hubs.signatures import sign

UPLOAD_SECRET = "test-upload-secret"  # the apps conftest's make_app builds
SECRET = "rq-e2e-secret"  # the service fixture's gate and hub
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


ANSWERS = Path(__file__).resolve().parent.parent / "docs" / "reference" / "schemas" / "answers.schema.json"


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    """The documented answer `name` (a definition of answers.schema.json), read once."""
    return Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": json.loads(ANSWERS.read_text())["$defs"]})


def schema_errors(answer, name: str) -> list[str]:
    """Where `answer` departs from the documented answer `name`."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in _validator(name).iter_errors(answer)]


def documented(answer, name: str):
    """`answer`, asserted to be what docs/reference/schemas/answers.schema.json says answer `name` is."""
    errors = schema_errors(answer, name)
    assert not errors, f"the {name} answer departs from {ANSWERS.name}: {errors[:5]}"
    return answer


def _answer_name(url: str, status: int, method: str) -> str:
    if status >= 400:
        return "error_answer"
    if "/v1/uploads" in url:
        return "upload_received" if method == "POST" else "upload"
    return "image_set"


def checked_deliver(url: str, *args, **kwargs) -> tuple[int, dict]:
    """A signed delivery (gate.hubs.client.deliver), its answer checked against the documented schema."""
    status, answer = deliver(url, *args, **kwargs)
    return status, documented(answer, _answer_name(url, status, "POST"))


def checked_get(url: str) -> dict:
    """GET a status URL; its answer checked against the documented schema."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return documented(json.loads(response.read()), _answer_name(url, response.status, "GET"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait(predicate, timeout: float, message: str, interval: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(message)


class RedisServer:
    """A throwaway redis-server without persistence: a restart loses every queued job, as in CI's Redis."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.process = free_port(), workdir, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                                     text=True).stdout.strip() == "PONG", 20, "redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Hub(ThreadingHTTPServer):
    """The hub's callback endpoint: records every signed decision it is sent; can refuse for a while."""

    def __init__(self):
        self.received: list[dict] = []
        self.undocumented: list[str] = []  # callbacks that departed from the documented schema (checked at teardown)
        self.refuse = False
        self.delay, self.requests = 0.0, 0  # seconds before answering; requests seen
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hub.requests += 1
                time.sleep(hub.delay)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signatures.verify(self.headers.get("X-Gate-Signature"), body, SECRET)
                if hub.refuse:
                    self.send_response(503)
                else:
                    message = json.loads(body)
                    hub.undocumented += schema_errors(message, "callback")
                    hub.received.append(message)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/lora-gate/callback"


NO_TORCH = """import sys

class NoTorch:
    # As if `pip install lora-gate` had left out the [probes] extra: torch and its stack cannot be imported.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "diffusers", "transformers", "peft", "accelerate"}:
            raise ModuleNotFoundError(f"No module named {name!r} (this worker is installed without [probes])")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def without_torch(tmp_path: Path) -> dict:
    """Environment for a process in which torch cannot be imported (a sitecustomize that refuses it)."""
    site = tmp_path / "no-torch-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TORCH)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def loaded_torch(pid: int) -> bool:
    """Whether a live process has torch's library mapped: read from outside, so nothing in it can hide it."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def status(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def final_state(url: str, service, timeout: float = 300) -> dict:
    answer = {}

    def done() -> bool:
        answer.update(status(url))
        return answer["state"] not in ("received", "scanning")

    try:
        wait(done, timeout, "no final state")
    except AssertionError:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(service.logs.glob("*.log")))
        raise AssertionError(f"still {answer.get('state')} after {timeout}s\n{logs}") from None
    return answer


def deliver_upload(service, lora_path: Path, model_id: str) -> dict:
    status, answer = deliver(f"{service.base}/v1/uploads", lora_path, SECRET,
                             {"hub": "testhub", "model_id": model_id, "version_id": "1", "uploader": "u1"})
    assert status == 202, answer
    return answer


def post_upload(client, data: bytes, meta: dict | None = None, secret: str = UPLOAD_SECRET,
                timestamp: int | None = None):
    body, content_type = multipart(data, meta, "lora.safetensors")
    return client.post("/v1/uploads", data=io.BytesIO(body), content_type=content_type,
                       headers={"X-Gate-Signature": sign(body, secret, timestamp)})


def wait_for(client, upload_id: str, states=("decided", "refused", "failed"), timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = documented(client.get(f"/v1/uploads/{upload_id}").get_json(), "upload")
        if answer["state"] in states:
            return answer
        time.sleep(0.2)
    raise AssertionError(f"upload {upload_id} still {answer['state']} after {timeout}s")




def wait_for_file(path: str, timeout: float = 30) -> bool:
    """A job that holds its worker until a file exists (a dotted path RQ can import)."""
    wait(lambda: Path(path).exists(), timeout, f"{path} never appeared")
    return True


def record_call(path: str, value: str) -> str:
    """A job for the queue contract tests: appends `value` to the file at `path` (a dotted path RQ can import)."""
    with open(path, "a") as out:
        out.write(value + "\n")
    return value


def unit_vectors(a) -> np.ndarray:
    """`a` scaled to unit length along its last axis, as float32 (as embedders give vectors)."""
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_references(rng, sheets: list[int], views: int, dimension: int) -> References:
    """Random reference views: a character per entry of `sheets`, with that many sheets of `views` views, each
    crop resembling its sheet."""
    vectors = rng.normal(size=(sum(sheets), views, dimension))
    vectors[:, 1:] = vectors[:, :1] + 0.6 * vectors[:, 1:]
    return References(tuple(f"c{i}" for i in range(len(sheets))), unit_vectors(vectors).reshape(-1, dimension),
                      np.repeat(np.arange(len(sheets)), np.array(sheets) * views), views=views)
