"""An image's views: the whole image first, then crops at two sizes on a 3 x 3 grid, each back at full size; a
reference's views: the whole, then three-quarter crops on the same grid."""

from __future__ import annotations

import numpy as np

from probes.views import (
    REFERENCE_VIEW_COUNT,
    VIEW_COUNT,
    image_views,
    reference_views,
    reference_views_id,
    view_boxes,
    views_id,
)


def test_the_whole_image_comes_first_and_every_view_is_full_size():
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    views = image_views(image)
    assert len(views) == VIEW_COUNT == 19
    assert np.array_equal(views[0], image)
    assert {v.shape for v in views[1:]} == {(48, 48, 3)}  # crops are squares of the shorter side


def test_a_figure_small_in_a_corner_fills_one_of_the_crops():
    image = np.full((64, 64, 3), 255, np.uint8)
    image[40:64, 0:24] = (200, 0, 0)  # a red figure, 24 px, in the bottom-left corner
    red = [float((v[..., 1] < 50).mean()) for v in image_views(image)]
    assert red[0] < 0.15  # in the whole image it is a small part
    assert max(red) > 0.5  # the bottom-left half-size crop is mostly the figure
    assert int(np.argmax(red)) == 1 + 6  # CROPS[0], GRID row 2 (bottom), column 0 (left)
    assert view_boxes(64, 64)[7] == (0, 32, 32, 64)  # the box a match in that view is shown with


def test_each_view_is_its_box_of_the_image():
    from PIL import Image

    coarse = np.random.default_rng(1).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((40, 40), Image.Resampling.BILINEAR))  # smooth: resamples well
    boxes = view_boxes(40, 40)
    assert boxes[0] == (0, 0, 40, 40) and len(boxes) == VIEW_COUNT
    views = image_views(image)
    for n in range(13, VIEW_COUNT):  # the 3/4 crops, 30 px, back at 40
        assert boxes[n][2] - boxes[n][0] == boxes[n][3] - boxes[n][1] == 30
        small = np.asarray(Image.fromarray(views[n]).resize((30, 30), Image.Resampling.BILINEAR)).astype(float)
        error = [np.abs(small - image[top:bottom, left:right]).mean() for left, top, right, bottom in boxes[13:]]
        assert int(np.argmin(error)) == n - 13 and error[n - 13] < 10  # its own box, and no other


def test_the_views_are_part_of_the_vectors_identity():
    assert views_id("clip@abc") == "clip@abc+views-v1" != views_id("clip@abd")
    assert reference_views_id("clip@abc") == "clip@abc+reference-views-v1"


def test_a_references_views_are_the_whole_and_its_three_quarter_crops():
    image = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    views = reference_views(image)
    assert len(views) == REFERENCE_VIEW_COUNT == 10
    assert np.array_equal(views[0], image)
    # the same boxes as an image's three-quarter crops, so a close-up of the figure is compared with one
    assert all(np.array_equal(a, b) for a, b in zip(views[1:], image_views(image)[10:], strict=True))


def test_the_image_embedder_stacks_each_images_views_whole_first():
    from PIL import Image

    from gate.config import load_settings
    from probes.embed import ImageEmbedder, ImageScreeningEmbedder

    settings = load_settings()
    side = ImageScreeningEmbedder(settings.image_embedder)
    reference = np.asarray(Image.open(settings.world_dir / "characters" / "ultraman" / "ref_00.png").convert("RGB"))
    whole = ImageEmbedder(settings.image_embedder).embed([reference])
    d = whole.shape[1]
    rows = side.images([reference, reference[::-1]])
    assert rows.shape == (2, VIEW_COUNT * d)
    assert np.allclose(rows[0, :d], whole[0], atol=1e-5)  # the first view is the whole image
    views = rows[0].reshape(VIEW_COUNT, -1)
    assert np.allclose(np.linalg.norm(views, axis=1), 1, atol=1e-4)  # each view normalised on its own
    references = side.references([reference])
    assert references.shape == (1, REFERENCE_VIEW_COUNT * d)
    # a reference's views are an image's whole and three-quarter views (a crop unlike its sheet: the whole again)
    for view, expected in zip(references[0].reshape(REFERENCE_VIEW_COUNT, d), views[[0, *range(10, VIEW_COUNT)]],
                              strict=True):
        assert np.allclose(view, expected, atol=1e-5) or np.allclose(view, views[0], atol=1e-5)
    assert side.vectors_id == views_id(side.reference_id)
    assert side.reference_id.endswith("+reference-views-v1")


def test_a_worker_screens_images_with_its_probe_engines_embedder_when_they_are_one_model(engine, monkeypatch):
    from gate.config import load_settings
    from probes import jobs

    world = load_settings().world_dir
    same = load_settings({"embedder_dir": str(world / "embedder")})  # no image embedder named: the same model
    monkeypatch.setattr(jobs, "_engines", {jobs._engine_key(same): engine})
    assert jobs.image_engine(same).embedder is engine.embedder  # one copy resident, not two
    other = load_settings({"embedder_dir": str(world / "embedder"),
                           "image_embedder_dir": str(world / "image_embedder")})
    monkeypatch.setattr(jobs, "_engines", {jobs._engine_key(other): engine})
    assert jobs.image_engine(other).embedder is not engine.embedder
    assert jobs.image_engine(other).reference_id.startswith("image_embedder@")


def test_a_big_images_crops_are_bounded_and_its_whole_is_left_as_it_is():
    from probes.views import MAX_VIEW_SIDE

    image = np.zeros((2000, 3000, 3), np.uint8)
    views = image_views(image)
    assert views[0] is image
    assert {v.shape for v in views[1:]} == {(MAX_VIEW_SIDE, MAX_VIEW_SIDE, 3)}
    assert sum(v.nbytes for v in views[1:]) < 12 * 2**20  # not 18 crops of 2000 x 2000


def test_views_embedded_in_any_grouping_give_the_same_rows(monkeypatch):
    from gate.config import load_settings
    from probes import embed
    from probes.embed import ImageScreeningEmbedder

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)] + \
        [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)]
    side = ImageScreeningEmbedder(load_settings().image_embedder)
    together = side.images(images)
    monkeypatch.setattr(embed, "VIEW_BYTES", 1)  # every image's views embedded on their own
    assert np.allclose(side.images(images), together, atol=1e-5) and together.shape[0] == 4


def test_a_reference_crop_that_no_longer_shows_the_character_is_its_whole_again():
    from PIL import Image

    from gate.config import load_settings
    from probes.embed import ImageEmbedder, ImageScreeningEmbedder
    from probes.views import REFERENCE_VIEW_FLOOR

    settings = load_settings()
    figure = Image.open(settings.world_dir / "characters" / "ultraman" / "ref_00.png").convert("RGB")
    sheet = Image.new("RGB", (figure.width * 4, figure.height * 4), (255, 255, 255))
    sheet.paste(figure, (0, 0))  # the figure in the top-left corner of a wide empty sheet
    sheet = np.asarray(sheet)
    plain = ImageEmbedder(settings.image_embedder).embed(reference_views(sheet))
    unlike = plain @ plain[0] < REFERENCE_VIEW_FLOOR
    assert unlike.any() and not unlike[0]  # the empty crops are unlike the sheet
    views = ImageScreeningEmbedder(settings.image_embedder).references([sheet])[0].reshape(REFERENCE_VIEW_COUNT, -1)
    assert np.allclose(views[unlike], plain[0], atol=1e-5)  # stood in for by the whole
    assert np.allclose(views[~unlike], plain[~unlike], atol=1e-5)  # the rest as they are
    assert ImageScreeningEmbedder(settings.image_embedder).references([]).shape[0] == 0
