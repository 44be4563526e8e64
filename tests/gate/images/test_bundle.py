"""Reading a set of images safely: real zip archives and image files, hostile ones included. An archive that
means harm is refused whole with a code; a bad image alone is refused alone; nothing is extracted to disk."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from gate.images.bundle import BundleError, read_bundle


def _png(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> str:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no data behind it (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_a_zip_of_images_with_captions_is_read_in_memory(tmp_path):
    archive = _zip(tmp_path / "set.zip", {"a.png": _png(1), "sub/b.png": _png(2), "sub/b.txt": b"a ninja frog",
                                          "captions.jsonl": b'{"file": "a.png", "caption": "Ultraman, standing"}\n'
                                                            b"not json\n"})
    before = set(os.listdir(tmp_path))
    bundle = read_bundle([archive])
    assert [(i.name, i.caption) for i in bundle.items] == [("a.png", "Ultraman, standing"),
                                                          ("sub/b.png", "a ninja frog")]
    assert not bundle.refused and set(os.listdir(tmp_path)) == before  # nothing extracted


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "C:/evil.png", "a\\..\\evil.png", "a/../../x.png"])
def test_a_member_named_outside_the_archive_refuses_the_archive(tmp_path, name):
    with pytest.raises(BundleError) as refused:
        read_bundle([_zip(tmp_path / "t.zip", {"ok.png": _png(), name: _png(1)})])
    assert refused.value.code == "bundle_path_unsafe"


def test_a_symlink_member_refuses_the_archive(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        link = zipfile.ZipInfo("innocent.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(BundleError) as refused:
        read_bundle([str(path)])
    assert refused.value.code == "bundle_symlink"


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"big.png": b"\0" * (64 * 1024 * 1024)})
    assert os.path.getsize(bomb) < 200 * 1024
    with pytest.raises(BundleError) as refused:
        read_bundle([bomb])
    assert refused.value.code == "bundle_bomb"


def test_a_hundred_thousand_empty_members_are_refused_at_the_count(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for n in range(100_000):
            archive.writestr(f"{n}.png", b"")
    with pytest.raises(BundleError) as refused:
        read_bundle([str(path)])
    assert refused.value.code == "bundle_too_many_files"


def test_bad_images_are_refused_alone_and_the_set_goes_on(tmp_path):
    truncated = _png(3)[:-40]
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(jpeg, format="JPEG")
    inner = _zip(tmp_path / "inner.zip", {"x.png": _png(4)})
    archive = _zip(tmp_path / "set.zip", {
        "good.png": _png(5), "bomb.png": _png_declaring(100_000, 100_000), "truncated.png": truncated,
        "cut.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "polyglot.png": _png(6) + open(inner, "rb").read(),
        "quine.zip": open(inner, "rb").read(), "notes.png": b"just some text, not an image",
    })
    bundle = read_bundle([archive])
    assert [i.name for i in bundle.items] == ["good.png"]
    assert {r["name"]: r["code"] for r in bundle.refused} == {
        "bomb.png": "image_dimensions", "truncated.png": "image_corrupt", "cut.jpg": "image_corrupt",
        "polyglot.png": "image_polyglot", "quine.zip": "image_format", "notes.png": "image_format"}


def test_folders_are_walked_without_following_links(tmp_path):
    folder = tmp_path / "set"
    (folder / "deep").mkdir(parents=True)
    (folder / "a.png").write_bytes(_png(7))
    (folder / "deep" / "b.webp").write_bytes(_png(8))  # a PNG named .webp: the bytes decide, not the name
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(9))
    (folder / "link.png").symlink_to(outside)
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)  # would reach secret.png if entered
    (folder / "notes.gif").write_bytes(b"GIF89a")
    bundle = read_bundle([str(folder)])
    assert sorted(i.name for i in bundle.items) == ["a.png", "deep/b.webp"]
    # what was not screened is said, as an archive's members are
    assert {r["name"]: r["code"] for r in bundle.refused} == {
        "link.png": "bundle_symlink", "linked": "bundle_symlink", "notes.gif": "image_format"}
    refused = read_bundle([str(folder / "link.png")]).refused
    assert [r["code"] for r in refused] == ["bundle_symlink"]


@pytest.mark.parametrize(("gone_at", "touches"), [("read_bytes", 1), ("stat", 2)])
def test_a_folders_file_that_cannot_be_read_is_refused_alone(tmp_path, monkeypatch, gone_at, touches):
    # A file removed between the walk and its stat or read (a race no test can time): really gone when touched
    # (`touches`: the walk stats each file once itself; an lstat is not counted).
    from collections import Counter
    from pathlib import Path

    folder = tmp_path / "set"
    folder.mkdir()
    for name, data in {"a.png": _png(1), "b.png": _png(2), "b.txt": b"a ninja frog", "c.png": _png(3)}.items():
        (folder / name).write_bytes(data)
    touch, touched = getattr(Path, gone_at), Counter()

    def vanishing(path, *args, **kwargs):
        if path.name in {"a.png", "b.txt"} and kwargs.get("follow_symlinks", True):
            touched[path.name] += 1
            if touched[path.name] == touches:
                os.unlink(path)
        return touch(path, *args, **kwargs)

    monkeypatch.setattr(Path, gone_at, vanishing)
    bundle = read_bundle([str(folder)])
    # The registry's code for a reference it cannot read, for an image and a caption alike; the rest screened.
    assert {r["name"]: r["code"] for r in bundle.refused} == {"a.png": "image_unreadable", "b.txt": "image_unreadable"}
    assert all("cannot read" in r["message"] for r in bundle.refused)
    assert [(i.name, i.caption) for i in bundle.items] == [("b.png", None), ("c.png", None)]


def test_a_large_sets_captions_are_read_and_captions_past_the_cap_are_refused_alone(tmp_path, monkeypatch):
    # 1,000 captions of ~120 bytes (a real set's captions.jsonl is over 100 KB): read, not refused
    lines = [json.dumps({"file": f"{n}.png", "caption": f"a drawing, number {n}, " + "detail " * 12})
             for n in range(1000)]
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("0.png", _png(1))
        out.writestr("captions.jsonl", "\n".join(lines))
    bundle = read_bundle([archive])
    assert bundle.refused == [] and bundle.items[0].caption.startswith("a drawing, number 0")
    # past the cap, the captions file is refused with its code and the images are screened without it
    from gate.images import bundle as module

    monkeypatch.setattr(module, "MAX_CAPTIONS_FILE_BYTES", 1024)
    capped = read_bundle([archive])
    assert [i.name for i in capped.items] == ["0.png"] and capped.items[0].caption in (None, "")
    assert [(r["name"], r["code"]) for r in capped.refused] == [("captions.jsonl", "captions_too_large")]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "0.png").write_bytes(_png(1))
    (folder / "0.txt").write_text("x" * (module.MAX_CAPTION_BYTES + 1))
    assert [r["code"] for r in read_bundle([folder]).refused] == ["captions_too_large"]


def _edited(path, member: str, edit) -> str:
    """The archive at `path` with one member's local and central headers (or its data) edited in place, at the
    offsets zipfile itself reports: `edit(raw, local_header_offset, central_header_offset, data_offset)`."""
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        local = info.header_offset
        name_len, extra_len = struct.unpack_from("<HH", raw, local + 26)
        central = raw.find(b"PK\x01\x02")
        while central >= 0:
            length = struct.unpack_from("<H", raw, central + 28)[0]
            if raw[central + 46:central + 46 + length] == member.encode():
                break
            central = raw.find(b"PK\x01\x02", central + 4)
    edit(raw, local, central, local + 30 + name_len + extra_len)
    open(path, "wb").write(bytes(raw))
    return str(path)


def _method(method: int):
    def edit(raw, local, central, _data):
        struct.pack_into("<H", raw, local + 8, method)
        struct.pack_into("<H", raw, central + 10, method)
    return edit


def _encrypted(raw, local, central, _data):
    struct.pack_into("<H", raw, local + 6, struct.unpack_from("<H", raw, local + 6)[0] | 1)
    struct.pack_into("<H", raw, central + 8, struct.unpack_from("<H", raw, central + 8)[0] | 1)


def _scrambled(raw, _local, _central, data):
    for k in range(data + 4, data + 24):
        raw[k] ^= 0x5A


@pytest.mark.parametrize(("edit", "code"), [
    (_scrambled, "bundle_member_unreadable"),  # corrupt deflate data, or a bad CRC
    (_method(99), "bundle_member_unreadable"),  # a method zipfile lacks (99: WinZip AES)
    (_method(14), "bundle_member_unreadable"),  # deflate bytes declared LZMA
    (_method(12), "bundle_member_unreadable"),  # declared bzip2
    (_encrypted, "bundle_member_encrypted"),
])
@pytest.mark.parametrize("member", ["a.png", "captions.jsonl"])
def test_a_member_the_archive_cannot_give_back_is_refused_alone(tmp_path, member, edit, code):
    captions = b"".join(json.dumps({"file": f"{n}.png", "caption": "a ninja frog " * 4}).encode() + b"\n"
                        for n in "ab")
    archive = _edited(_zip(tmp_path / "set.zip", {"captions.jsonl": captions, "a.png": _png(1, 96),
                                                  "b.png": _png(2)}), member, edit)
    bundle = read_bundle([archive])
    assert [(r["name"], r["code"]) for r in bundle.refused] == [(member, code)]
    assert all(member in r["message"] for r in bundle.refused)
    expected = ["b.png"] if member == "a.png" else ["a.png", "b.png"]
    assert [i.name for i in bundle.items] == expected
    assert all(i.caption is None for i in bundle.items) == (member == "captions.jsonl")
