"""Fetching URL uploads against hostile servers on loopback: no byte (not even a TLS ClientHello) reaches a
refused address, and the overall deadline holds whatever the server trickles (headers, body, redirects)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from gate.config import FetchLimits
from gate.hubs.fetch import FetchError, fetch_to_file


class Listener:
    """A raw TCP server on loopback: counts connections and bytes received; `respond` decides what it sends."""

    def __init__(self, respond=None, family=socket.AF_INET, host="127.0.0.1"):
        self.server = socket.socket(family, socket.SOCK_STREAM)
        self.server.bind((host, 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.connections, self.received, self.respond = 0, 0, respond
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(5)
        try:
            data = client.recv(65536)
            self.received += len(data)
            if self.respond:
                self.respond(client, data)
        except OSError:
            pass
        finally:
            client.close()

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:{port}/lora.safetensors",  # the outside test's request: TLS to a private port
    "http://127.0.0.1:{port}/lora.safetensors",
    "https://localhost:{port}/lora.safetensors",  # a name that resolves to loopback
    "https://127.1:{port}/lora.safetensors",  # another spelling of it
])
def test_no_byte_goes_to_a_refused_address(tmp_path, url):
    listener = Listener()
    try:
        with pytest.raises(FetchError) as refused:
            fetch_to_file(url.format(port=listener.port), tmp_path, FetchLimits(timeout_seconds=5), 1024,
                          public_only=True)
        time.sleep(0.3)
        assert refused.value.code == "url_private"
        assert listener.connections == 0 and listener.received == 0
    finally:
        listener.close()


def test_no_byte_goes_to_a_refused_ipv6_address(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        listener = Listener(family=socket.AF_INET6, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with pytest.raises(FetchError) as refused:
            fetch_to_file(f"https://[::1]:{listener.port}/x", tmp_path, FetchLimits(timeout_seconds=5), 1024,
                          public_only=True)
        assert refused.value.code == "url_private" and listener.connections == 0
    finally:
        listener.close()


def _trickle(prefix: bytes, trickled: bytes, every: float = 0.4):
    def respond(client, _request):
        client.sendall(prefix)
        for byte in trickled:
            client.sendall(bytes([byte]))
            time.sleep(every)
    return respond


@pytest.mark.parametrize("respond", [
    _trickle(b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100),  # headers a byte at a time
    _trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 100),  # the body a byte at a time
    _trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 100),  # chunked
], ids=["headers", "body", "chunked-body"])
def test_the_overall_deadline_holds_whatever_the_server_trickles(tmp_path, respond):
    listener = Listener(respond)
    limits = FetchLimits(timeout_seconds=2, connect_timeout_seconds=10)  # each byte comes well within 10 s
    try:
        started = time.monotonic()
        with pytest.raises(FetchError) as late:
            fetch_to_file(f"http://127.0.0.1:{listener.port}/x", tmp_path, limits, 1024)
        assert late.value.code == "fetch_timeout" and late.value.transient
        assert time.monotonic() - started < limits.timeout_seconds + 3  # not the ~40 s the trickle would take
        assert not list(tmp_path.glob("*.fetch"))  # nothing half-written is left
    finally:
        listener.close()


def test_the_deadline_spans_redirects(tmp_path):
    slow = Listener(_trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 100))

    def redirect(client, _request):
        time.sleep(1.2)  # most of the deadline spent before the redirect
        client.sendall(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{slow.port}/x\r\n"
                       "Content-Length: 0\r\n\r\n".encode())

    first = Listener(redirect)
    try:
        started = time.monotonic()
        with pytest.raises(FetchError) as late:
            fetch_to_file(f"http://127.0.0.1:{first.port}/x", tmp_path, FetchLimits(timeout_seconds=2), 1024)
        assert late.value.code == "fetch_timeout" and time.monotonic() - started < 5
    finally:
        first.close()
        slow.close()


def test_a_quick_server_is_still_fetched(tmp_path):
    listener = Listener(lambda client, _: client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    try:
        fetched = fetch_to_file(f"http://127.0.0.1:{listener.port}/x", tmp_path, FetchLimits(timeout_seconds=5), 1024)
        assert fetched.path.read_bytes() == b"hello" and fetched.size == 5
    finally:
        listener.close()


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://127.0.0.1/x", "data:,x"])
def test_a_redirect_to_another_scheme_is_fetch_redirects_whichever_scheme(tmp_path, target):
    listener = Listener(lambda client, _: client.sendall(
        f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()))
    try:
        with pytest.raises(FetchError) as refused:
            fetch_to_file(f"http://127.0.0.1:{listener.port}/x", tmp_path, FetchLimits(timeout_seconds=5), 1024)
        assert refused.value.code == "fetch_redirects" and not refused.value.transient
    finally:
        listener.close()
