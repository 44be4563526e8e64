"""Validate images that people upload (character references): real PNG/JPEG/WebP of sensible size."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gate.errors import GateError

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
        with Image.open(io.BytesIO(self.data)) as image:
            return np.asarray(image.convert("RGB"))


def check_image(path: str | Path) -> CheckedImage:
    """Read and validate one image file; raises ImageError naming what is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImageError(f"{path.name}: {size} bytes; references may be at most {MAX_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot read ({exc.strerror})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ALLOWED_FORMATS:
                raise ImageError(f"{path.name}: {image.format} images are not accepted; use PNG, JPEG or WebP")
            width, height = image.size
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise ImageError(f"{path.name}: {width}x{height}; sides must be {MIN_SIDE} to {MAX_SIDE} pixels")
            image.load()  # decode fully: a truncated or corrupt file fails here, not later
            image_format = image.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path.name}: not a readable image ({exc})") from None
    return CheckedImage(data, hashlib.sha256(data).hexdigest(), image_format, width, height)
