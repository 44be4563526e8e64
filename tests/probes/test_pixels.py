"""Pictures decoded as a viewer shows them, on both sides of the seam (the gate's checks and a probe worker's)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gate.registry.images import check_image_bytes
from probes.pixels import shown_rgb


def _bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_a_photo_taken_on_its_side_is_turned_as_its_exif_says():
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 8, 32))  # a red band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    shown = check_image_bytes(_bytes(image, "JPEG", exif=exif, quality=95), "phone.jpg").rgb()
    assert shown.shape == (64, 32, 3)  # portrait, as a viewer shows it
    assert shown[:8, :, 0].mean() > 200 and shown[-8:, :, 0].mean() < 50  # the band now along the top


def test_transparent_parts_are_shown_over_white_not_black():
    cutout = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    cutout.paste((10, 120, 250, 255), (8, 8, 24, 24))
    shown = check_image_bytes(_bytes(cutout), "cutout.png").rgb()
    assert tuple(shown[0, 0]) == (255, 255, 255) and tuple(shown[16, 16]) == (10, 120, 250)
    palette = cutout.convert("P")  # a palette image with a transparent colour
    assert "transparency" in Image.open(io.BytesIO(_bytes(palette))).info
    assert tuple(check_image_bytes(_bytes(palette), "p.png").rgb()[0, 0]) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white():
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1)))
    shown = check_image_bytes(_bytes(ramp), "deep.png").rgb()
    assert shown[0, 0, 0] == 0 and shown[0, -1, 0] == 255 and 100 < shown[0, 16, 0] < 160


def test_the_probe_side_decodes_the_same_pixels():
    image = Image.new("LA", (20, 20), (90, 0))
    data = _bytes(image)
    with Image.open(io.BytesIO(data)) as opened:
        assert np.array_equal(shown_rgb(opened), check_image_bytes(data, "g.png").rgb())
