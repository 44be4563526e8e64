"""A signed multipart delivery read in one streaming pass: every byte feeds the signature check, the weights go
straight to a spool file with their sha256, the small parts stay in memory. Nothing is held whole, nothing is
written twice, and nothing read here is trusted until the caller has checked the signature."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gate.errors import GateError

CHUNK = 1024 * 1024
SMALL_PART_BYTES = 1024 * 1024  # the hub's record and any other field part
PREVIEW_BYTES = 8 * 1024 * 1024  # one preview image (a `preview` part), held in memory
IMAGE_PART_BYTES = 20 * 1024 * 1024  # one `image` part of a list of images (spooled), as image checks allow
MAX_PREVIEWS = 8
MAX_PARTS = 16


class BadDelivery(GateError):
    code = "delivery_invalid"


class BodyTooLarge(GateError):
    code = "body_too_large"


@dataclass
class Part:
    name: str = ""
    filename: str | None = None
    size: int = 0
    data: bytearray = field(default_factory=bytearray)


@dataclass
class SpooledDelivery:
    """What a multipart body held: the weights on disk (path, sha256, size, filename) and the small parts."""

    fields: dict[str, bytes]
    previews: list[tuple[str, bytes]] = field(default_factory=list)  # (filename, bytes) of each `preview` part
    images: list[tuple[str, Path]] = field(default_factory=list)  # (filename, spooled file) of each `image` part
    weights: Path | None = None
    sha256: str = ""
    size: int = 0
    filename: str | None = None

    def discard(self) -> None:
        if self.weights is not None:
            self.weights.unlink(missing_ok=True)
        for _, path in self.images:
            path.unlink(missing_ok=True)


def spool_multipart(stream, boundary: str, limit: int, mac, spool_dir: Path, fsync: bool = False,
                    max_parts: int = MAX_PARTS) -> SpooledDelivery:
    """Read a multipart/form-data body from `stream`, feeding `mac` with every raw byte (see the module doc;
    None when the body was checked before). `image` parts (a list of images, where the route takes them) are
    spooled to files of their own, as the `file` part is.
    With `fsync`, the weights are on the disk itself before this returns (GATE_RECORD_SYNC=full)."""
    if not spool_dir.is_dir():
        spool_dir.mkdir(parents=True, exist_ok=True)
    delivery = SpooledDelivery(fields={})
    digest = hashlib.sha256()
    state = {"part": Part(), "header": [b"", b""], "headers": {}, "target": None, "parts": 0}

    def on_part_begin():
        state["parts"] += 1
        if state["parts"] > max_parts:
            raise BadDelivery(f"the multipart body has more than {max_parts} parts", "multipart_invalid")
        state["part"], state["headers"], state["target"] = Part(), {}, None

    def on_header_field(data, start, end):
        state["header"][0] += data[start:end]

    def on_header_value(data, start, end):
        state["header"][1] += data[start:end]

    def on_header_end():
        name, value = state["header"]
        state["headers"][name.strip().lower()] = value.strip()
        state["header"] = [b"", b""]

    def on_headers_finished():
        _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
        part = state["part"]
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        if part.name == "file":
            if delivery.weights is not None:
                raise BadDelivery("the multipart body has more than one 'file' part", "multipart_invalid")
            target = tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".weights")
            delivery.weights, delivery.filename, state["target"] = Path(target.name), part.filename, target
        elif part.name == "image" and max_parts > MAX_PARTS:  # only a route that takes lists of images
            target = tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".image")
            delivery.images.append((part.filename or f"image_{len(delivery.images)}", Path(target.name)))
            state["target"], state["image"] = target, True

    def on_part_data(data, start, end):
        part, chunk = state["part"], data[start:end]
        part.size += len(chunk)
        if state["target"] is not None:
            if state.get("image"):
                if part.size > IMAGE_PART_BYTES:
                    raise BadDelivery(f"an 'image' part is over {IMAGE_PART_BYTES} bytes", "multipart_invalid")
            else:
                digest.update(chunk)
            state["target"].write(chunk)
        elif part.size > (PREVIEW_BYTES if part.name == "preview" else SMALL_PART_BYTES):
            raise BadDelivery(f"the '{part.name}' part is over "
                              f"{PREVIEW_BYTES if part.name == 'preview' else SMALL_PART_BYTES} bytes",
                              "multipart_invalid")
        else:
            part.data += chunk

    def on_part_end():
        part = state["part"]
        if state["target"] is not None:
            if fsync:
                state["target"].flush()
                os.fsync(state["target"].fileno())
            state["target"].close()
            state["target"] = None
            if state.pop("image", False):
                return  # an image part: its bytes are hashed when the set is packed
            delivery.sha256, delivery.size = digest.hexdigest(), part.size
        elif part.name == "preview":
            if len(delivery.previews) >= MAX_PREVIEWS:
                raise BadDelivery(f"more than {MAX_PREVIEWS} 'preview' parts", "multipart_invalid")
            delivery.previews.append((part.filename or f"preview_{len(delivery.previews)}", bytes(part.data)))
        elif part.name:
            delivery.fields[part.name] = bytes(part.data)

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    size = 0
    try:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body is over {limit} bytes")
            if mac is not None:
                mac.update(chunk)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        _abandon(state, delivery)
        raise BadDelivery(f"the multipart body is malformed: {exc}", "multipart_invalid") from None
    except BaseException:
        _abandon(state, delivery)
        raise
    if state["target"] is not None:  # the body ended inside the file part
        _abandon(state, delivery)
        raise BadDelivery("the multipart body ends inside the 'file' part", "multipart_invalid")
    return delivery


def _abandon(state: dict, delivery: SpooledDelivery) -> None:
    if state["target"] is not None:
        state["target"].close()
    delivery.discard()
