"""Fetching weights over HTTP with limits: http/https only, Content-Length checked first, the size enforced while
streaming, an overall deadline (enforced by shutting the sockets, whatever the server sends), a redirect cap,
addresses checked before any byte is sent to them, and typed errors. Used for URL uploads and Hub files alike.

Runs only in jobs (the intake queue), never in a request thread.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import ipaddress
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gate.config import FetchLimits
from gate.errors import GateError

CHUNK = 1024 * 1024
MAX_URL_CHARS = 4096
SCHEMES = ("http", "https")


class FetchError(GateError):
    """A fetch failed; `transient` ones (the server unreachable or overloaded) are worth retrying."""

    code = "fetch_failed"

    def __init__(self, message: str, code: str | None = None, transient: bool = False):
        super().__init__(message, code)
        self.transient = transient


def host_allowed(host: str, allowed_hosts: str) -> bool:
    """Whether `host` matches one of the comma-separated patterns (fnmatch, case-insensitive)."""
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.strip().lower()) for pattern in allowed_hosts.split(",")
               if pattern.strip())


def check_url(url: object, allowed_hosts: str = "") -> str:
    """An absolute http(s) URL with a host (one of `allowed_hosts` where given), or a typed error saying what
    is wrong (url_invalid, url_host_not_allowed)."""
    if not isinstance(url, str) or not url:
        raise FetchError("url must be a non-empty string", "url_invalid")
    if len(url) > MAX_URL_CHARS:
        raise FetchError(f"url is longer than {MAX_URL_CHARS} characters", "url_invalid")
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise FetchError(f"url scheme {parts.scheme or '(none)'!r} is not allowed: use http or https", "url_invalid")
    if not parts.hostname:
        raise FetchError("url has no host", "url_invalid")
    if allowed_hosts and not host_allowed(parts.hostname, allowed_hosts):
        raise FetchError(f"url host {parts.hostname!r} is not one this gate fetches from (GATE_FETCH_ALLOWED_HOSTS)",
                         "url_host_not_allowed")
    return url


class _Deadline:
    """One fetch's overall deadline, across connecting, redirects, headers and the body: when it passes, every
    socket the fetch opened is shut down, so a server that trickles a byte at a time cannot hold it longer."""

    def __init__(self, seconds: float):
        self.seconds, self.expired = seconds, False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _connect(connection, deadline: _Deadline, public_only: bool) -> None:
    """Resolve the host, check every address it resolves to (with `public_only`: only global addresses), then
    connect to exactly the address checked. Nothing, not even a TLS ClientHello, goes to a refused address,
    and a name that resolves differently on a second lookup cannot slip past the check."""
    try:
        found = socket.getaddrinfo(connection.host, connection.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"{connection.host}: cannot resolve ({exc.strerror})", "fetch_unreachable",
                         transient=True) from None
    if public_only:
        for *_, sockaddr in found:
            address = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if not address.is_global:
                raise FetchError(f"{connection.host} is at {address}, not a public address: the gate fetches "
                                 "uploads only from the internet", "url_private")
    family, kind, proto, _, sockaddr = found[0]
    sock = socket.socket(family, kind, proto)
    deadline.track(sock)
    sock.settimeout(connection.timeout if connection.timeout is not socket._GLOBAL_DEFAULT_TIMEOUT else None)
    try:
        sock.connect(sockaddr)
    except OSError:
        sock.close()
        raise
    connection.sock = sock


def _handlers(deadline: _Deadline, public_only: bool) -> list:
    """urllib handlers whose connections go through `_connect` (checked, tracked by the deadline)."""

    class Plain(http.client.HTTPConnection):
        def connect(self):
            _connect(self, deadline, public_only)

    class Secure(http.client.HTTPSConnection):
        def connect(self):
            _connect(self, deadline, public_only)  # the address is checked before the TLS handshake
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)
            deadline.track(self.sock)

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Plain, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(Secure, req, context=self._context)

    return [HTTP(), HTTPS()]


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most `limit` redirects, and only to http(s)."""

    def __init__(self, limit: int, allowed_hosts: str = ""):
        self.max_redirections = limit
        self.max_repeats = 2  # the same URL twice more is a loop
        self.allowed_hosts = allowed_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            check_url(newurl, self.allowed_hosts)
        except FetchError as exc:  # a redirect's fault, whichever scheme it names (urllib's own refusals agree)
            raise FetchError(f"redirected to {newurl[:200]}: {exc.message}",
                             "fetch_redirects" if exc.code == "url_invalid" else exc.code) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int


def _http_error(url: str, exc: urllib.error.HTTPError) -> FetchError:
    if 300 <= exc.code < 400:
        return FetchError(f"{url}: too many redirects or a redirect loop", "fetch_redirects")
    if exc.code in (404, 410):
        return FetchError(f"{url}: not found (HTTP {exc.code})", "fetch_not_found")
    if exc.code in (401, 403):
        return FetchError(f"{url}: access denied (HTTP {exc.code})", "fetch_forbidden")
    if exc.code == 429 or exc.code >= 500:
        return FetchError(f"{url}: the server answered HTTP {exc.code}", "fetch_unreachable", transient=True)
    return FetchError(f"{url}: the server refused (HTTP {exc.code})", "fetch_refused")


def fetch_to_file(url: str, spool_dir: Path, limits: FetchLimits, max_bytes: int,
                  headers: dict[str, str] | None = None, public_only: bool = False,
                  allowed_hosts: str = "") -> Fetched:
    """Stream `url` into a new file under spool_dir, hashing as it goes; never more than max_bytes. With
    `public_only` (a URL an uploader chose), only public addresses are connected to; with `allowed_hosts`,
    only those hosts, redirects included."""
    check_url(url, allowed_hosts)
    request = urllib.request.Request(url, headers={"User-Agent": "lora-gate"})
    for name, value in (headers or {}).items():
        request.add_unredirected_header(name, value)  # credentials never follow a redirect to another host
    spool_dir.mkdir(parents=True, exist_ok=True)
    target = None
    with _Deadline(limits.timeout_seconds) as deadline:
        opener = urllib.request.build_opener(_Redirects(limits.max_redirects, allowed_hosts),
                                             *_handlers(deadline, public_only))
        try:
            with opener.open(request, timeout=limits.connect_timeout_seconds) as answer:
                declared = answer.headers.get("Content-Length")
                if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"{url}: Content-Length {declared} is over the limit of {max_bytes} bytes",
                                     "fetch_too_large")
                digest, size = hashlib.sha256(), 0
                with tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".fetch") as out:
                    target = Path(out.name)
                    while chunk := answer.read1(CHUNK):  # what has arrived: the deadline is checked between reads
                        size += len(chunk)
                        if size > max_bytes:
                            raise FetchError(f"{url}: the body is over the limit of {max_bytes} bytes",
                                             "fetch_too_large")
                        if deadline.expired:
                            break
                        digest.update(chunk)
                        out.write(chunk)
            if deadline.expired:  # the sockets were shut: what was read is cut short, whatever it looked like
                raise TimeoutError
        except FetchError:
            _discard(target)
            raise
        except urllib.error.HTTPError as exc:
            _discard(target)
            raise _http_error(url, exc) from None
        except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            _discard(target)
            if deadline.expired or isinstance(exc, TimeoutError):
                raise FetchError(f"{url}: not fetched within {limits.timeout_seconds:g} s", "fetch_timeout",
                                 transient=True) from None
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"{url}: unreachable ({reason})", "fetch_unreachable", transient=True) from None
    return Fetched(target, digest.hexdigest(), size)


def _discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
