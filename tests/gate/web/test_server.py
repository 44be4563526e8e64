"""`gate serve`'s HTTP server (gate.web.server) over real sockets: body limits on the head, forged uploads refused
before their bodies are read and never written to disk, deadlines for heads and bodies, connection and stream
caps per address, and the WSGI bridge itself (streaming, chunked bodies, keep-alive, 100-continue)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gate.hubs.signatures import DIGEST_HEADER, sign, sign_digest
from gate.web.limits import body_limit
from gate.web.server import Front
from tests.conftest import REPO
from tests.support import UPLOAD_SECRET, free_port, wait

MiB = 1024 * 1024
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


class Served:
    def __init__(self, front: Front, port: int, data_dir: Path | None):
        self.front, self.port, self.data_dir = front, port, data_dir

    def connect(self, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout, source_address=(source, 0))

    def healthz(self, source: str = "127.0.0.1") -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5, source_address=(source, 0))
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status
        finally:
            connection.close()

    def disk_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.data_dir.rglob("*") if path.is_file())


@pytest.fixture
def serve(make_app, tmp_path):
    """Run the gate's app, or any WSGI app, under the real server in a thread of this process."""
    fronts = []

    def start(app=None, settings: dict | None = None, **http) -> Served:
        # A Redis nobody answers on: accepted uploads stay recorded (the reconciler's case), no scan runs here.
        gate_app = make_app(http=http, redis_url=f"redis://127.0.0.1:{free_port()}/0", **(settings or {}))
        limits = gate_app.config["GATE_SETTINGS"].http
        front = Front(app or gate_app, 4, limits, lambda method, path: body_limit(gate_app, method, path))
        port, ready = free_port(), threading.Event()
        threading.Thread(target=asyncio.run, args=(front.run("127.0.0.1", port, ready.set),), daemon=True).start()
        assert ready.wait(10)
        fronts.append(front)
        return Served(front, port, None if app else tmp_path / "data")

    yield start
    for front in fronts:
        front.stop()


def _head(sock: socket.socket, length: int | None, signature: str, path: str = "/v1/uploads",
          extra: str = "", content_type: str = MULTIPART) -> None:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: gate\r\nX-Gate-Signature: {signature}\r\n{extra}"
                  f"Content-Type: {content_type}\r\n{framing}\r\n\r\n").encode())


def _answer(sock: socket.socket) -> tuple[int, dict]:
    """Read one answer (Content-Length framed, as the gate's JSON errors are)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status = int(head.split()[1])
    if status == 100:
        return _answer_after(sock, body)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return status, json.loads(body)


def _answer_after(sock, rest):
    class Rest:
        def __init__(self):
            self.buffer = rest

        def recv(self, n):
            if self.buffer:
                out, self.buffer = self.buffer, b""
                return out
            return sock.recv(n)

    return _answer(Rest())


def _multipart(data: bytes) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.safetensors"\r\n\r\n'
            ).encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# --- body limits: the gate's own, refused on the head ----------------------------------------------------------

@pytest.mark.parametrize(("path", "declared"), [("/v1/uploads", 10 * 1024 * MiB), ("/v1/uploads", 7 * MiB),
                                                ("/v1/uploads", 2**62), ("/login", 2 * MiB), ("/nowhere", 5 * MiB)],
                         ids=["10GiB", "just-over", "huge", "a-form", "no-route"])
def test_a_declared_length_over_the_routes_limit_is_refused_at_once_with_json(serve, path, declared):
    served = serve(settings={"intake": {"max_file_bytes": 2 * MiB}})  # uploads: 2 MiB and the 4 MiB envelope
    with served.connect() as sock:
        _head(sock, declared, sign(b"", UPLOAD_SECRET), path)  # nothing of the body is sent
        status, answer = _answer(sock)
    assert status == 413 and answer["error"]["code"] == "body_too_large"


def test_under_gate_serve_the_limit_is_the_gates_whatever_the_size(tmp_path):
    """`gate serve` itself: a 6 GiB upload signed over its digest is not refused on its head when the gate takes
    8 GiB files (waitress, the earlier server, refused anything over 1 GiB), and one over the limit is."""
    port = free_port()
    env = {**os.environ, "GATE_DATA_DIR": str(tmp_path / "data"), "GATE_UPLOAD_SECRET": UPLOAD_SECRET,
           "GATE_INTAKE_MAX_FILE_BYTES": str(8192 * MiB), "REDIS_URL": "", "GATE_REDIS_URL": ""}
    process = subprocess.Popen([sys.executable, "-m", "gate", "serve", "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1), 60,
             "gate serve did not start")
        digest = "ab" * 32
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            _head(sock, 6144 * MiB, sign_digest(digest, UPLOAD_SECRET), extra=f"{DIGEST_HEADER}: {digest}\r\n")
            with pytest.raises(TimeoutError):  # no answer: the gate waits for the body
                sock.recv(1)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            _head(sock, 9000 * MiB, sign_digest(digest, UPLOAD_SECRET), extra=f"{DIGEST_HEADER}: {digest}\r\n")
            assert _answer(sock)[1]["error"]["code"] == "body_too_large"
    finally:
        process.terminate()  # its scan worker child may still be importing torch: give the two of them time
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- forged uploads: refused on the head, and never on disk -----------------------------------------------------

FORGED = {  # signed when the test runs (collection may be minutes earlier than the 5-minute window)
    "expired": (lambda: sign(b"x", "wrong", 1), 40 * MiB, "", 401, "signature_expired"),
    "unicode-digits": (lambda: "t=²,v1=" + "0" * 64, 40 * MiB, "", 401, "signature_malformed"),
    "v1-too-large-to-hold": (lambda: sign(b"x", "wrong"), 900 * MiB, "", 413, "digest_signature_required"),
    "v1-chunked": (lambda: sign(b"x", "wrong"), None, "", 411, "length_required"),
    "v2-forged": (lambda: sign_digest("cd" * 32, "wrong"), 900 * MiB, f"{DIGEST_HEADER}: {'cd' * 32}\r\n", 401,
                  "signature_mismatch"),
    "v2-without-digest": (lambda: sign_digest("cd" * 32, UPLOAD_SECRET), 900 * MiB, "", 401, "signature_malformed"),
    "v2-other-digest": (lambda: sign_digest("cd" * 32, UPLOAD_SECRET), 900 * MiB,
                        f"{DIGEST_HEADER}: {'ef' * 32}\r\n", 401, "signature_mismatch"),
}


@pytest.mark.parametrize("case", FORGED, ids=list(FORGED))
def test_a_forged_upload_is_refused_on_its_head(serve, case):
    signature, length, extra, status, code = FORGED[case]
    served = serve()  # uploads of up to 4 GiB
    with served.connect() as sock:
        _head(sock, length, signature(), extra=extra)  # the body is never sent: the answer comes without it
        answer = _answer(sock)
    assert answer[0] == status and answer[1]["error"]["code"] == code
    assert served.disk_bytes() < MiB


def test_a_v1_forged_body_waits_in_memory_and_never_reaches_the_disk(serve):
    """A v1 signature is checked only at the body's end: the body is held in memory till then, not spooled."""
    served = serve()
    body = _multipart(os.urandom(24 * MiB))
    before = served.disk_bytes()
    with served.connect(timeout=30) as sock:
        _head(sock, len(body), sign(body, "not-the-secret"))
        sock.sendall(body[:20 * MiB])
        time.sleep(0.5)
        during = served.disk_bytes()
        sock.sendall(body[20 * MiB:])
        status, answer = _answer(sock)
    assert (status, answer["error"]["code"]) == (401, "signature_mismatch")
    assert during - before < MiB and not any((served.data_dir / "incoming").glob("*"))


def test_v1_bodies_held_at_once_are_capped_per_address(serve):
    served = serve(unverified_per_address=1)
    body = _multipart(os.urandom(3 * MiB))
    with served.connect(timeout=30) as first, served.connect(timeout=30) as second:
        _head(first, len(body), sign(body, UPLOAD_SECRET))
        first.sendall(body[:MiB])  # the first is being held: the second from this address waits its turn
        time.sleep(0.3)
        _head(second, len(body), sign(body, UPLOAD_SECRET))
        second.sendall(body)
        status, answer = _answer(second)
        assert (status, answer["error"]["code"]) == (429, "too_many_unverified")
        first.sendall(body[MiB:])
        assert _answer(first)[0] == 202


def test_a_v2_upload_streams_to_the_spool_and_must_hash_to_its_digest(serve):
    served = serve()
    body = _multipart(os.urandom(3 * MiB))
    digest = hashlib.sha256(body).hexdigest()
    tampered = body[:MiB] + bytes(40) + body[MiB + 40:]  # same framing, other weights
    for sent, expected in ((body, 202), (tampered, 401)):
        with served.connect(timeout=30) as sock:
            _head(sock, len(sent), sign_digest(digest, UPLOAD_SECRET), extra=f"{DIGEST_HEADER}: {digest}\r\n")
            sock.sendall(sent)
            status, answer = _answer(sock)
        assert status == expected, answer
    assert answer["error"]["code"] == "signature_mismatch"
    assert not any((served.data_dir / "incoming").glob("*"))  # the mismatching body's spool is gone


# --- slow clients ----------------------------------------------------------------------------------------------

def test_a_slowloris_cannot_hold_the_gate(serve):
    """Connections trickling their heads: each is cut at the head deadline, one address holds at most its cap
    (the oldest trickler makes room for a newcomer), and /healthz answers throughout, from any address."""
    served = serve(head_seconds=2, connections_per_address=8)
    tricklers = []
    for _ in range(20):
        sock = served.connect("127.0.0.2")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gate\r\n")
        tricklers.append(sock)
    try:
        for _ in range(3):
            for sock in tricklers:
                try:
                    sock.sendall(b"X-a: b\r\n")
                except OSError:
                    pass
            assert served.healthz("127.0.0.1") == 200
            assert served.healthz("127.0.0.2") == 200  # same address as the tricklers: the oldest made room
            assert len(served.front.clients.get("127.0.0.2", [])) <= 8
            time.sleep(0.5)
        time.sleep(2)
        assert not served.front.clients.get("127.0.0.2")  # every trickler was cut at its head deadline
    finally:
        for sock in tricklers:
            sock.close()


def test_a_head_past_its_deadline_gets_408(serve):
    served = serve(head_seconds=1)
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        status, answer = _answer(sock)
    assert (status, answer["error"]["code"]) == (408, "request_timeout")


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered-body", "streamed-body"])
def test_a_stalled_body_is_cut(serve, streamed):
    served = serve(idle_seconds=1, head_seconds=5)
    body = _multipart(os.urandom(3 * MiB if streamed else 200_000))
    digest = hashlib.sha256(body).hexdigest()
    with served.connect() as sock:
        _head(sock, len(body), sign_digest(digest, UPLOAD_SECRET), extra=f"{DIGEST_HEADER}: {digest}\r\n")
        sock.sendall(body[:len(body) // 2])  # then nothing
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        waited = time.monotonic() - started
    assert waited < 8  # cut at the idle deadline, not left open
    assert data.startswith(b"HTTP/1.1 4") or not data
    time.sleep(0.3)
    assert not any((served.data_dir / "incoming").glob("*")) and not served.front.streams


def test_large_bodies_at_once_are_capped_per_address(serve):
    served = serve(streams_per_address=2)
    digest = "ab" * 32
    socks = [served.connect() for _ in range(3)]
    try:
        for sock in socks[:2]:
            _head(sock, 50 * MiB, sign_digest(digest, UPLOAD_SECRET), extra=f"{DIGEST_HEADER}: {digest}\r\n")
        time.sleep(0.3)
        _head(socks[2], 50 * MiB, sign_digest(digest, UPLOAD_SECRET), extra=f"{DIGEST_HEADER}: {digest}\r\n")
        status, answer = _answer(socks[2])
        assert (status, answer["error"]["code"]) == (429, "too_many_streams")
        assert served.healthz() == 200
    finally:
        for sock in socks:
            sock.close()


# --- the WSGI bridge -------------------------------------------------------------------------------------------

def _echo(environ, start_response):
    """Reads the body the way werkzeug's parsers do (sized reads) and answers what it saw."""
    digest, size, stream = hashlib.sha256(), 0, environ["wsgi.input"]
    while chunk := stream.read(100_000):
        digest.update(chunk)
        size += len(chunk)
    seen = {"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
            "size": size, "sha256": digest.hexdigest(), "forwarded": environ.get("HTTP_X_FORWARDED_FOR"),
            "remote": environ["REMOTE_ADDR"]}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 7], ids=["empty", "buffered", "streamed"])
def test_bodies_reach_the_app_whole_chunked_or_not_on_one_kept_alive_connection(serve, size):
    served = serve(_echo)
    served.front.body_limit = lambda method, path: 64 * MiB
    data = os.urandom(size)
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        for chunked in (False, True):
            body = iter([data[i:i + 65536] for i in range(0, len(data), 65536)]) if chunked else data
            connection.request("POST", "/caf%C3%A9/x?q=1", body=body, encode_chunked=chunked,
                               headers={"X_Forwarded_For": "10.9.9.9", "Expect": "100-continue"} if size else {})
            seen = json.loads(connection.getresponse().read())
            assert seen["size"] == size and seen["sha256"] == hashlib.sha256(data).hexdigest()
            assert seen["path"] == "/café/x".encode().decode("latin-1") and seen["query"] == "q=1"
            assert seen["forwarded"] is None and seen["remote"] == "127.0.0.1"  # underscored headers are dropped
    finally:
        connection.close()


def test_invalid_http_gets_a_json_400(serve):
    served = serve()
    for garbage in (b"NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"GET / HTTP/1.1\r\n" +
                    b"X-a: " + b"b" * 70_000 + b"\r\n\r\n"):
        with served.connect() as sock:
            sock.sendall(garbage)
            status, answer = _answer(sock)
        assert status in (400, 431) and answer["error"]["code"] in ("request_invalid", "headers_too_large")
    assert served.healthz() == 200
