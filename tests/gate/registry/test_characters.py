"""Reference images are validated before anything is stored, with a typed error per problem; characters can be
changed (names, policy, references) in one transaction that is refused whole."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gate.record.db import open_db
from gate.registry.characters import (
    RegistryError,
    add_character,
    get_character,
    reference_rows,
    retire_character,
    update_character,
)
from gate.registry.images import ImageError, check_image


def _png(path, size=(32, 32), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def _bomb_png(path, side=60_000):
    """A PNG header declaring side x side pixels, with almost no data: decoding it would need gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _gif(path):
    Image.new("RGB", (32, 32)).save(path, format="GIF")
    return path


def _animated_webp(path):
    frames = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, format="WEBP", save_all=True, append_images=frames[1:])
    return path


def _truncated_png(path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:300])
    return path


@pytest.mark.parametrize("make,code", [
    (lambda p: _png(p, (8, 8)), "image_dimensions"),
    (lambda p: _png(p, (5000, 20)), "image_dimensions"),
    (_bomb_png, "image_dimensions"),
    (_gif, "image_format"),
    (lambda p: (p.write_bytes(b"\x80\x04\x95pickle"), p)[1], "image_format"),
    (_animated_webp, "image_animated"),
    (_truncated_png, "image_corrupt"),
    (lambda p: (p.write_bytes(b""), p)[1], "image_corrupt"),
], ids=["tiny", "too-wide", "decompression-bomb", "gif", "pickle", "animated", "truncated", "empty"])
def test_bad_reference_images_get_a_typed_error(tmp_path, make, code):
    with pytest.raises(ImageError) as caught:
        check_image(make(tmp_path / "ref.img"))
    assert caught.value.code == code and caught.value.message


def test_a_missing_image_is_unreadable(tmp_path):
    with pytest.raises(ImageError) as caught:
        check_image(tmp_path / "nope.png")
    assert caught.value.code == "image_unreadable"


@pytest.fixture
def registry(tmp_path):
    db = open_db(tmp_path / "gate.db")
    store = tmp_path / "references"
    add_character(db, store, name="Comet Cat", rights_holder="Studio", policy="quarantine",
                  references=[_png(tmp_path / "a.png"), _png(tmp_path / "b.png", colour=(0, 90, 200))],
                  aliases=["コメットキャット"])
    return db, store


def test_update_changes_names_policy_and_references(registry, tmp_path):
    db, store = registry
    old = reference_rows(db, "comet_cat")
    character = update_character(db, store, "comet_cat", name="Comet Cat II", add_aliases=["c0met cat"],
                                 policy="block", add_references=[_png(tmp_path / "c.png", colour=(9, 9, 9))],
                                 remove_references=[old[0]["sha256"][:10]])
    assert character.name == "Comet Cat II" and character.policy == "block"
    assert character.aliases == ["コメットキャット", "c0met cat"]
    rows = reference_rows(db, "comet_cat")
    assert len(rows) == 2 and old[0]["sha256"] not in {r["sha256"] for r in rows}
    assert not any(store.rglob(f"{old[0]['sha256'][:16]}.*"))  # its copy is gone too


@pytest.mark.parametrize("change,code", [
    ({"policy": "delete"}, "policy_invalid"),
    ({"remove_references": ["abc"]}, "reference_not_found"),
    ({"remove_references": "ALL"}, "references_count"),
    ({"name": "  "}, "registry_invalid"),
])
def test_a_bad_update_is_refused_whole(registry, tmp_path, change, code):
    db, store = registry
    change = {"add_references": [_png(tmp_path / "d.png", colour=(1, 2, 3))], **change}
    if change["remove_references" if "remove_references" in change else "add_references"] == "ALL":
        change = {"remove_references": [r["sha256"] for r in reference_rows(db, "comet_cat")]}
    with pytest.raises(RegistryError) as caught:
        update_character(db, store, "comet_cat", aliases=["changed"], **change)
    assert caught.value.code == code
    assert get_character(db, "comet_cat").aliases == ["コメットキャット"]
    assert len(reference_rows(db, "comet_cat")) == 2


def test_updating_an_unknown_character_says_so(registry):
    db, store = registry
    with pytest.raises(RegistryError) as caught:
        update_character(db, store, "nobody", policy="block")
    assert caught.value.code == "character_not_found"


def test_a_reference_embedded_as_views_gives_a_row_a_view_with_its_path(registry):
    from gate.registry.characters import embed_missing, load_references

    db, _ = registry

    def embed(images):  # three 4-dimensional views a reference, each its mean colour and a marker
        return np.stack([np.concatenate([[*np.asarray(image, float).mean(axis=(0, 1)) / 255, view]
                                         for view in range(3)]) for image in images])

    assert embed_missing(db, embed, "views@1") == 2
    references = load_references(db, "views@1", views=3)
    assert references.vectors.shape == (6, 4) and references.character_ids == ("comet_cat",)
    assert references.vectors[:, 3].tolist() == [0, 1, 2, 0, 1, 2]  # each reference's views in order
    assert len(set(references.paths)) == 2 and references.paths[0] == references.paths[2] != references.paths[3]
    assert load_references(db, "views@1").vectors.shape == (2, 12)  # read whole, a row is the stack


def test_image_references_are_read_once_while_the_registry_stands(registry, tmp_path):
    from gate.images.screen import image_references
    from gate.registry.characters import embed_missing
    from probes.views import REFERENCE_VIEW_COUNT

    db, store = registry

    def embed(images):  # REFERENCE_VIEW_COUNT 4-dimensional views a reference, from its mean colour
        return np.stack([np.tile([*np.asarray(image, float).mean(axis=(0, 1)) / 255, 1.0], REFERENCE_VIEW_COUNT)
                         for image in images]).astype(np.float32)

    embed_missing(db, embed, "views@2")
    first = image_references(db, "views@2")
    assert first.vectors.shape == (2 * REFERENCE_VIEW_COUNT, 4) and image_references(db, "views@2") is first
    with pytest.raises(ValueError):  # shared by every screening: nobody may change it in place
        first.vectors[0, 0] = 1
    add_character(db, store, name="Moon Dog", rights_holder="Studio", policy="block",
                  references=[_png(tmp_path / "m.png", colour=(200, 200, 0))])
    embed_missing(db, embed, "views@2")
    second = image_references(db, "views@2")  # a character registered: read again, and seen
    assert second is not first and second.character_ids == ("comet_cat", "moon_dog")
    retire_character(db, "moon_dog")  # retired: read again too
    assert image_references(db, "views@2").character_ids == ("comet_cat",)
