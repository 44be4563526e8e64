"""A hub's side of the contract, for integration tests and for hub engineers trying the gate: build a
signed multipart delivery and send it."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from gate.hubs.signatures import DIGEST_HEADER, sign, sign_digest


def multipart(data: bytes | None, meta: dict | None, filename: str,
              previews: list[tuple[str, bytes]] = (), images: list[tuple[str, bytes]] = ()) -> tuple[bytes, str]:
    """A multipart/form-data body with a `file` part (unless `data` is None), optional `preview` and `image`
    parts, and an optional `meta` JSON part."""
    boundary = uuid.uuid4().hex
    files = ([("file", filename, data)] if data is not None else []) + [("preview", n, b) for n, b in previews] \
        + [("image", n, b) for n, b in images]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{part}"; filename="{name}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
                    for part, name, content in files)
    if meta is not None:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="meta"\r\n'
                 f"Content-Type: application/json\r\n\r\n{json.dumps(meta)}\r\n").encode()
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def deliver(url: str, path: str | Path | None, secret: str, meta: dict | None = None, timeout: float = 60,
            previews: list[str | Path] = (), images: list[str | Path] = ()) -> tuple[int, dict]:
    """POST an upload to `url` (…/v1/uploads; or a set of images to …/v1/datasets, /v1/images: a file, or
    `images` as parts of their own with `path` None); returns (HTTP status, JSON answer). It is signed both ways:
    over its sha256 (v2, checked before the gate reads the body, for any size) and over the body (v1, for gates
    from before 2026-12-06, which ignore v2)."""
    path = Path(path) if path is not None else None
    body, content_type = multipart(path.read_bytes() if path else None, meta, path.name if path else "",
                                   [(Path(p).name, Path(p).read_bytes()) for p in previews],
                                   [(Path(p).name, Path(p).read_bytes()) for p in images])
    digest = hashlib.sha256(body).hexdigest()
    timestamp = int(time.time())
    both = f"{sign(body, secret, timestamp)},{sign_digest(digest, secret, timestamp).split(',', 1)[1]}"
    request = urllib.request.Request(url, body, {"Content-Type": content_type, DIGEST_HEADER: digest,
                                                 "X-Gate-Signature": both})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
