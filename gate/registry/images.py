"""Validate images that people upload (character references): real PNG/JPEG/WebP of sensible size."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gate.errors import GateError
from probes.pixels import shown_rgb

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
MAX_BYTES = 20 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 16, 4096


class ImageError(GateError):
    code = "image_invalid"


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    format: str
    width: int
    height: int

    def rgb(self) -> np.ndarray:
        """The picture as a viewer shows it, 8-bit RGB (probes/pixels.py)."""
        with Image.open(io.BytesIO(self.data)) as image:
            return shown_rgb(image)


MAX_PIXELS = MAX_SIDE * MAX_SIDE


def check_image(path: str | Path) -> CheckedImage:
    """Read and validate one image file; raises ImageError (with a code naming what is wrong)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageError(f"{path.name}: {size} bytes; images may be at most {MAX_BYTES}", "image_too_large")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot read ({exc.strerror})", "image_unreadable") from None
    return check_image_bytes(data, path.name)


def check_image_bytes(data: bytes, name: str) -> CheckedImage:
    """Validate one image held in memory; raises ImageError (with a code naming what is wrong).

    Pillow is told which formats to try (no other decoder ever sees the bytes), and the size is checked from
    the header before any pixel is decoded, so a small file cannot expand into gigabytes. A file that is also
    a zip archive (a polyglot: an image with an archive appended) is refused: it carries more than a picture."""
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {len(data)} bytes; images may be at most {MAX_BYTES}", "image_too_large")
    if not data:
        raise ImageError(f"{name}: empty file", "image_corrupt")
    try:
        with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as image:
            width, height = image.size
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
                raise ImageError(f"{name}: {width}x{height}; sides must be {MIN_SIDE} to {MAX_SIDE} pixels",
                                 "image_dimensions")
            if getattr(image, "n_frames", 1) > 1:
                raise ImageError(f"{name}: an animated image; give one still picture", "image_animated")
            image.load()  # decode fully: a truncated or corrupt file fails here, not later
            image_format = image.format
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a PNG, JPEG or WebP image", "image_format") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: declares more pixels than any image may have ({MAX_SIDE}x{MAX_SIDE})",
                         "image_dimensions") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})", "image_corrupt") from None
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise ImageError(f"{name}: an image that is also a zip archive", "image_polyglot")
    return CheckedImage(data, hashlib.sha256(data).hexdigest(), image_format, width, height)
