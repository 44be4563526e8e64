"""The views an image is matched by: the whole image and overlapping crops, so that a character drawn small in
a corner of a scene or gallery picture is seen at the size its references show it. Torch-free: the gate names
the scheme in the vectors' identity, and a probe worker cuts the views.

An image's vector is its views' vectors stacked (VIEW_COUNT x d, whole image first). A reference is embedded as
views too, but only as large crops (REFERENCE_VIEW_COUNT x d): a portrait or a close-up shows part of what a
reference sheet frames, while a small crop of a reference is a patch of flat colour that generic pictures match
as well, and so is a crop that no longer resembles its sheet (REFERENCE_VIEW_FLOOR). An image matches a
character by its most similar pair of views.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

VIEWS = "views-v1"  # part of the vectors' identity: another scheme is another embedding
CROPS = (0.5, 0.75)  # crop sides, as a share of the image's shorter side
GRID = 3  # crop positions along each axis: the edges and the middle
VIEW_COUNT = 1 + len(CROPS) * GRID * GRID
REFERENCE_VIEWS = "reference-views-v1"
REFERENCE_CROPS = (0.75,)  # a reference's crops: three quarters of its shorter side, on the same grid
REFERENCE_VIEW_COUNT = 1 + len(REFERENCE_CROPS) * GRID * GRID
# A reference's crop whose vector is less similar than this to its whole sheet's no longer shows the character
# (mostly background, a flat patch) and would match generic pictures: its whole stands in for it.
REFERENCE_VIEW_FLOOR = 0.5
MAX_VIEW_SIDE = 448  # a crop is resized to at most this: above any embedder's input, and a 4096-pixel image's
#                      18 crops stay 11 MB, not 900 MB


def view_boxes(width: int, height: int, crops: tuple[float, ...] = CROPS,
               grid: int = GRID) -> list[tuple[int, int, int, int]]:
    """Each view's (left, top, right, bottom) in an image of this size, the whole image first (other `crops`
    and `grid` are for benchmarks.image_screening's comparison; the gate uses VIEWS' own)."""
    side = min(height, width)
    boxes = [(0, 0, width, height)]
    for share in crops:
        size = max(1, round(side * share))
        for top in np.linspace(0, height - size, grid).round().astype(int):
            for left in np.linspace(0, width - size, grid).round().astype(int):
                boxes.append((int(left), int(top), int(left) + size, int(top) + size))
    return boxes


def image_views(image: np.ndarray, crops: tuple[float, ...] = CROPS, grid: int = GRID) -> list[np.ndarray]:
    """The whole image, then each crop resized to the shorter side, or MAX_VIEW_SIDE if less (the embedder's
    processor resizes either way; at that size a crop keeps the detail the whole image had)."""
    height, width = image.shape[:2]
    side = min(height, width, MAX_VIEW_SIDE)
    whole = Image.fromarray(image)
    return [image] + [np.asarray(whole.crop(box).resize((side, side), Image.Resampling.BICUBIC))
                      for box in view_boxes(width, height, crops, grid)[1:]]


def reference_views(image: np.ndarray) -> list[np.ndarray]:
    """A reference's views: the whole, then its REFERENCE_CROPS."""
    return image_views(image, REFERENCE_CROPS, GRID)


def floored(views: np.ndarray) -> np.ndarray:
    """References' view vectors, (..., REFERENCE_VIEW_COUNT or any count, d) with the whole first, where a crop
    less similar than REFERENCE_VIEW_FLOOR to its whole is the whole again (the shape kept)."""
    views = np.array(views, np.float32)
    unlike = np.einsum("...vd,...d->...v", views, views[..., 0, :]) < REFERENCE_VIEW_FLOOR
    views[unlike] = np.broadcast_to(views[..., :1, :], views.shape)[unlike]
    return views


def reference_views_id(embedder_id: str) -> str:
    """The identity of reference vectors made of REFERENCE_VIEWS with this embedder."""
    return f"{embedder_id}+{REFERENCE_VIEWS}"


def views_id(reference_id: str) -> str:
    """The identity of image vectors made of VIEWS with the embedder whose reference vectors are
    `reference_id`: thresholds and stored vectors are for one such pair."""
    return f"{reference_id}+{VIEWS}"
