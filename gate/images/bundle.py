"""Reading a set of images to screen, safely: files, folders and zip archives, each image validated by the
reference checks (gate.registry.images), optional captions beside them.

A zip is read in memory, member by member, never extracted: nothing lands on disk under a name the archive
chose. Before any member is read, the archive as a whole is refused (BundleError, with a code) for too many
members, a declared total beyond the limit, a compression ratio that only a bomb has, an unsafe member name
(absolute, `..`, a drive, a backslash) or a symlink. Each member is read with a bound at its declared size,
so a lying header cannot inflate it. A member that is not a good image (a zip inside the zip, a truncated
JPEG, a PNG that declares a billion pixels) or cannot be read from the archive (corrupt data, a bad CRC, a
compression method zipfile lacks, a password) is refused alone, with its code; the rest of the set goes on.

Captions, as kohya's trainers take them: a `captions.jsonl` (lines of {"file": ..., "caption": ...}) or a
sidecar `<image stem>.txt`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from gate.errors import GateError
from gate.registry.images import MAX_BYTES, CheckedImage, ImageError, check_image_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
CAPTIONS_FILE = "captions.jsonl"
MAX_CAPTION_BYTES = 64 * 1024  # one image's .txt caption
# A set's captions.jsonl: a line an image, up to 10,000 of them (a 1,000-image set of plain captions is ~100 KB).
MAX_CAPTIONS_FILE_BYTES = 32 * 1024 * 1024
CHUNK = 1024 * 1024


class BundleError(GateError):
    code = "bundle_invalid"


@dataclass(frozen=True)
class BundleLimits:
    max_files: int = 10_000  # members of an archive, or images in a set
    max_total_bytes: int = 2 * 1024**3  # declared uncompressed size of an archive
    max_ratio: float = 200.0  # uncompressed / compressed, per member: beyond it only a bomb compresses so well


@dataclass
class ImageItem:
    """One image of a set: its name in the set, the checked image, its caption."""

    name: str
    image: CheckedImage
    caption: str | None = None


@dataclass
class Bundle:
    """What was read: the images, and each member refused alone (name, code, message)."""

    items: list[ImageItem] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)

    def refuse(self, name: str, error: GateError) -> None:
        self.refused.append({"name": name, "code": error.code, "message": error.message})


def read_bundle(paths: list[str | Path], limits: BundleLimits = BundleLimits()) -> Bundle:
    """Every image under `paths` (files, folders walked without following links, zip archives)."""
    bundle = Bundle()
    captions: dict[str, str] = {}
    for given in map(Path, paths):
        if given.is_symlink():
            bundle.refuse(given.name, BundleError(f"{given.name}: a symbolic link; give the file itself",
                                                  "bundle_symlink"))
        elif given.is_dir():
            _read_folder(given, bundle, captions, limits)
        elif given.suffix.lower() == ".zip":
            read_zip(given, given.name, bundle, captions, limits)
        elif (size := _size(bundle, given.name, given)) is not None:
            _add(bundle, given.name, given.read_bytes, size, captions)
        if len(bundle.items) + len(bundle.refused) > limits.max_files:
            raise BundleError(f"more than {limits.max_files} files in the set", "bundle_too_many_files")
    for item in bundle.items:
        item.caption = captions.get(item.name) or captions.get(PurePosixPath(item.name).name) or item.caption
    return bundle


def _read_folder(folder: Path, bundle: Bundle, captions: dict[str, str], limits: BundleLimits) -> None:
    """Walked without following links (a folder linked inside is not entered); what is not screened is said, as
    an archive's members are: a link (never followed out of the folder) and a file that is not an image."""
    entries = [p for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()]
    if len(entries) > limits.max_files:
        raise BundleError(f"{folder.name}: {len(entries)} files; a set may hold {limits.max_files}",
                          "bundle_too_many_files")
    for path in entries:
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            bundle.refuse(name, BundleError(f"{name}: a symbolic link; not followed", "bundle_symlink"))
        elif (size := _size(bundle, name, path)) is None:
            continue
        elif path.name == CAPTIONS_FILE or path.suffix.lower() == ".txt":
            _add_caption(bundle, name, lambda cap, p=path: p.read_bytes(), size, captions)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            _add(bundle, name, path.read_bytes, size, captions)
        else:
            bundle.refuse(name, ImageError(f"{name}: not a PNG, JPEG or WebP image", "image_format"))


def read_zip(source: Path | IO[bytes], name: str, bundle: Bundle, captions: dict[str, str],
             limits: BundleLimits = BundleLimits()) -> None:
    """The images of one zip archive, a file or a seekable stream (the archive checked first, then each member,
    read into memory one at a time)."""
    try:
        archive = zipfile.ZipFile(source)
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise BundleError(f"{name}: not a readable zip archive ({exc})", "bundle_archive_corrupt") from None
    if len(members) > limits.max_files:
        raise BundleError(f"{name}: {len(members)} members; an archive may hold {limits.max_files}",
                          "bundle_too_many_files")
    declared = sum(m.file_size for m in members)
    if declared > limits.max_total_bytes:
        raise BundleError(f"{name}: declares {declared} bytes unpacked; at most {limits.max_total_bytes}",
                          "bundle_too_large")
    for member in members:
        _check_member(name, member, limits)
    with archive:
        for member in members:
            if member.is_dir():
                continue
            inner = member.filename
            suffix = PurePosixPath(inner).suffix.lower()
            if PurePosixPath(inner).name == CAPTIONS_FILE or suffix == ".txt":
                _add_caption(bundle, inner, lambda cap, m=member: _read_member(archive, m, cap), member.file_size,
                             captions)
            elif suffix in IMAGE_SUFFIXES:
                _add(bundle, inner, lambda m=member: _read_member(archive, m, MAX_BYTES), member.file_size,
                     captions)
            else:
                bundle.refuse(inner, ImageError(f"{inner}: not a PNG, JPEG or WebP image", "image_format"))


def _check_member(archive: str, member: zipfile.ZipInfo, limits: BundleLimits) -> None:
    """The archive is refused as a whole for one hostile member: its author meant harm."""
    inner = member.filename
    parts = PurePosixPath(inner).parts
    if (inner.startswith("/") or "\\" in inner or ".." in parts or (parts and ":" in parts[0])
            or "\x00" in inner):
        raise BundleError(f"{archive}: member {inner!r} names a path outside the archive", "bundle_path_unsafe")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise BundleError(f"{archive}: member {inner!r} is a symbolic link", "bundle_symlink")
    if member.compress_size and member.file_size / member.compress_size > limits.max_ratio \
            and member.file_size > 1024 * 1024:
        raise BundleError(f"{archive}: member {inner!r} unpacks {member.file_size} bytes from "
                          f"{member.compress_size} (a zip bomb's ratio)", "bundle_bomb")


# What zipfile raises for a member it cannot give back: a bad CRC or header, corrupt deflate / LZMA / bzip2 data
# (zlib.error, LZMAError, OSError), a truncated stream, an unknown compression method.
UNREADABLE = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, NotImplementedError)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, cap: int) -> bytes:
    """A member's bytes, at most its declared size and `cap`; more than declared is a lie (a bomb). A member that
    cannot be read is an ImageError, refused alone: the archive's other members may be fine."""
    limit = min(member.file_size, cap)
    if member.flag_bits & 0x1:  # zipfile would ask for a password (RuntimeError)
        raise ImageError(f"{member.filename}: encrypted in its archive; the gate reads no password-protected member",
                         "bundle_member_encrypted")
    try:
        with archive.open(member) as stream:
            data = stream.read(limit + 1)
    except UNREADABLE as exc:
        raise ImageError(f"{member.filename}: cannot be read from its archive ({exc})",
                         "bundle_member_unreadable") from None
    if len(data) > limit:
        if len(data) > member.file_size:
            raise BundleError(f"member {member.filename!r} unpacks past its declared size", "bundle_bomb")
        raise ImageError(f"{member.filename}: larger than {cap} bytes", "image_too_large")
    return data


def _add(bundle: Bundle, name: str, read, size: int, captions: dict[str, str]) -> None:
    if size > MAX_BYTES:
        bundle.refuse(name, ImageError(f"{name}: {size} bytes; an image may be at most {MAX_BYTES}",
                                       "image_too_large"))
        return
    with _refused_alone(bundle, name):
        bundle.items.append(ImageItem(name, check_image_bytes(read(), name)))


def _add_caption(bundle: Bundle, name: str, read, size: int, captions: dict[str, str]) -> None:
    """A captions.jsonl or an image's .txt, as _add takes an image: `read(cap)` gives its bytes. Past its cap it is
    refused alone: the images are screened without these captions, and the answer says so."""
    cap = MAX_CAPTIONS_FILE_BYTES if PurePosixPath(name).name == CAPTIONS_FILE else MAX_CAPTION_BYTES
    if size > cap:
        bundle.refuse(name, ImageError(f"{name}: {cap} bytes of captions at most; the images are screened without "
                                       f"them", "captions_too_large"))
        return
    with _refused_alone(bundle, name):
        _caption(name, read(cap), captions)


def _size(bundle: Bundle, name: str, path: Path) -> int | None:
    """A file's size, or None where it went away after the walk (refused alone, as a failed read is)."""
    with _refused_alone(bundle, name):
        return path.stat().st_size
    return None


@contextmanager
def _refused_alone(bundle: Bundle, name: str) -> Iterator[None]:
    """A file the checks refuse, or one that cannot be read, is refused alone and the set goes on. A folder's file
    that went away or cannot be opened gets the registry's code and words for a reference it cannot read (an
    archive's member raises its own in _read_member)."""
    try:
        yield
    except ImageError as exc:
        bundle.refuse(name, exc)
    except OSError as exc:
        bundle.refuse(name, ImageError(f"{name}: cannot read ({exc.strerror or exc})", "image_unreadable"))


def _caption(name: str, data: bytes, captions: dict[str, str]) -> None:
    text = data.decode("utf-8", errors="replace")
    if PurePosixPath(name).name == CAPTIONS_FILE:
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                captions[str(entry["file"])] = str(entry["caption"])[:2000]
            except (ValueError, KeyError, TypeError):
                continue  # a bad caption line costs that caption, not the set
        return
    stem = str(PurePosixPath(name).with_suffix(""))
    for suffix in IMAGE_SUFFIXES:
        captions.setdefault(stem + suffix, text.strip()[:2000])


def pack(images: list[tuple[str, Path]], spool_dir: Path) -> tuple[Path, str, int]:
    """A list of image parts as one stored zip (names reduced to their last part and made unique; fixed
    timestamps, so the same images in the same order make the same bytes, and a re-send is the same set)."""
    target = Path(tempfile.NamedTemporaryFile(dir=spool_dir, delete=False, suffix=".zip").name)
    used: set[str] = set()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for n, (name, path) in enumerate(images):
            base = PurePosixPath(name.replace("\\", "/")).name or f"image_{n}"
            arcname = base if base not in used else f"{n}_{base}"
            used.add(arcname)
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as out, open(path, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)
    digest = hashlib.sha256()
    with open(target, "rb") as stored:
        while chunk := stored.read(CHUNK):
            digest.update(chunk)
    return target, digest.hexdigest(), target.stat().st_size
