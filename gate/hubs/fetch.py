"""Fetching weights over HTTP with limits: http/https only, Content-Length checked first, the size enforced while
streaming, an overall deadline, a redirect cap, and typed errors. Used for URL uploads and Hub files alike.

Runs only in jobs (the intake queue), never in a request thread.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import ipaddress
import tempfile
import time
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


def _public_only(connection_class):
    """A connection class that refuses, once connected and before sending anything, a peer that is not a public
    address (loopback, private, link-local such as cloud metadata): the check is on the address actually
    connected to, so DNS tricks and redirects cannot reach the gate's own network."""

    class PublicOnly(connection_class):
        def connect(self):
            super().connect()
            address = ipaddress.ip_address(self.sock.getpeername()[0].split("%")[0])
            if not address.is_global:
                self.sock.close()
                raise FetchError(f"{self.host} is at {address}, not a public address: the gate fetches uploads "
                                 "only from the internet", "url_private")

    return PublicOnly


class _PublicHTTP(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_public_only(http.client.HTTPConnection), req)


class _PublicHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_public_only(http.client.HTTPSConnection), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most `limit` redirects, and only to http(s)."""

    def __init__(self, limit: int, allowed_hosts: str = ""):
        self.max_redirections = limit
        self.max_repeats = 2  # the same URL twice more is a loop
        self.allowed_hosts = allowed_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, self.allowed_hosts)
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
    handlers = [_Redirects(limits.max_redirects, allowed_hosts)]
    if public_only:
        handlers += [_PublicHTTP(), _PublicHTTPS()]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "lora-gate"})
    for name, value in (headers or {}).items():
        request.add_unredirected_header(name, value)  # credentials never follow a redirect to another host
    deadline = time.monotonic() + limits.timeout_seconds
    spool_dir.mkdir(parents=True, exist_ok=True)
    target = None
    try:
        with opener.open(request, timeout=limits.connect_timeout_seconds) as answer:
            declared = answer.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{url}: Content-Length {declared} is over the limit of {max_bytes} bytes",
                                 "fetch_too_large")
            digest, size = hashlib.sha256(), 0
            with tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".fetch") as out:
                target = Path(out.name)
                while chunk := answer.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"{url}: the body is over the limit of {max_bytes} bytes", "fetch_too_large")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{url}: not fetched within {limits.timeout_seconds:g} s", "fetch_timeout",
                                         transient=True)
                    digest.update(chunk)
                    out.write(chunk)
    except FetchError:
        _discard(target)
        raise
    except urllib.error.HTTPError as exc:
        _discard(target)
        raise _http_error(url, exc) from None
    except TimeoutError:
        _discard(target)
        raise FetchError(f"{url}: timed out", "fetch_timeout", transient=True) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        _discard(target)
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: unreachable ({reason})", "fetch_unreachable", transient=True) from None
    return Fetched(target, digest.hexdigest(), size)


def _discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
