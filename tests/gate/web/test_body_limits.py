"""Body limits under `gate serve` (waitress), over real HTTP: the limit is the gate's own setting whatever the
server's default, and a declared Content-Length over it is refused at once, before any of the body is sent,
with the documented JSON error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO
from tests.support import free_port

MiB = 1024 * 1024


@pytest.fixture
def serve_with_limit(tmp_path):
    started = []

    def start(max_file_bytes: int) -> int:
        port = free_port()
        env = {**os.environ, "GATE_DATA_DIR": str(tmp_path / f"data-{port}"), "GATE_UPLOAD_SECRET": "limit-secret",
               "GATE_INTAKE_MAX_FILE_BYTES": str(max_file_bytes), "REDIS_URL": "", "GATE_REDIS_URL": ""}
        process = subprocess.Popen([sys.executable, "-m", "gate", "serve", "--port", str(port)], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return port
            except OSError:
                time.sleep(0.2)
        raise AssertionError("gate serve did not start")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def _headers_only(port: int, length: int, path: str = "/v1/uploads", chunked: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Gate-Signature: t=1,v1={'0' * 64}\r\n"
                  f"Content-Type: multipart/form-data; boundary=x\r\n{framing}\r\n\r\n").encode())
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            next((line.split(b":")[1] for line in data.split(b"\r\n") if line.lower().startswith(b"content-length")),
                 b"0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("declared", [10 * 1024 * MiB, 2 * MiB + 5 * MiB, 2**62], ids=["10GiB", "just-over", "huge"])
def test_a_declared_length_over_the_limit_is_refused_at_once_with_json(serve_with_limit, declared):
    port = serve_with_limit(2 * MiB)  # the gate's limit: 2 MiB of weights (plus the envelope)
    sock = _headers_only(port, declared)
    try:
        status, answer = _answer(sock)  # nothing of the body was sent: the answer comes on the headers alone
    finally:
        sock.close()
    assert status == 413 and answer["error"]["code"] == "body_too_large"


def test_the_limit_is_the_gates_not_the_servers_default(serve_with_limit):
    """With the gate's limit at 4 GiB, a 2 GiB declared body is not refused at its headers (waitress's own
    default would refuse anything over 1 GiB there)."""
    port = serve_with_limit(4096 * MiB)
    sock = _headers_only(port, 2048 * MiB)
    sock.settimeout(2)
    try:
        with pytest.raises(TimeoutError):  # no answer yet: the gate waits for the body
            sock.recv(1)
    finally:
        sock.close()
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
