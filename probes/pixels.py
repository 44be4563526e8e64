"""Decoded pictures as a viewer shows them (torch-free, shared by the gate and the probe workers, so that an
image embedded on either side gives the same vector)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

TRANSPARENT_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def as_shown(image: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows the picture: turned as its EXIF orientation says (a phone's photo taken on
    its side), transparent parts over white (a character cut out of its background, as a hub's page shows it),
    16-bit grey scaled to 8 bits (a plain conversion clips it to white)."""
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # unreadable EXIF: the pixels as stored
        pass
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    if image.mode in TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def shown_rgb(image: Image.Image) -> np.ndarray:
    """as_shown, as an (h, w, 3) uint8 array."""
    return np.asarray(as_shown(image))
