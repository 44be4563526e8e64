"""Tell what a file really is from its first bytes, whatever its name says."""

from __future__ import annotations

import struct

from gate.errors import IntakeError, Refusal

# Pickle streams written with protocol 2+ open with PROTO (0x80) and the protocol number.
_PICKLE_PROTOCOLS = range(2, 6)
# Protocol 0/1 pickles open with an opcode such as MARK '(' , EMPTY_DICT '}', GLOBAL 'c', EMPTY_LIST ']'.
_OLD_PICKLE_OPENERS = (b"(dp", b"(lp", b"}q", b"]q", b"ccollections", b"ctorch", b"c__builtin__")

_OTHER_MAGICS = {
    b"\x1f\x8b": "a gzip stream",
    b"GGUF": "a GGUF model",
    b"\x89HDF": "an HDF5 file",
    b"7z\xbc\xaf": "a 7-zip archive",
    b"Rar!": "a RAR archive",
    b"\x7fELF": "an executable (ELF)",
    b"MZ": "a Windows executable",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
}

HEAD_BYTES = 16


def _plausible_safetensors(head: bytes, file_size: int) -> bool:
    """An 8-byte length that fits the file, then '{': the low bytes of the length can look like any magic
    number (0x80 0x04 is a pickle's opening, 'MZ' an executable's), so this is checked first."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < struct.unpack("<Q", head[:8])[0] <= file_size - 8


def sniff(head: bytes, file_size: int) -> str:
    """Return "safetensors" for a plausible safetensors file; raise IntakeError naming what it is otherwise."""
    if not head:
        raise IntakeError(Refusal.FILE_EMPTY, "the file is empty")
    if _plausible_safetensors(head, file_size):
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        raise IntakeError(
            Refusal.FORMAT_PICKLE,
            f"this is a Python pickle (protocol {head[1]}), which can run code when loaded; "
            "upload the weights as .safetensors",
        )
    if head.startswith(_OLD_PICKLE_OPENERS):
        raise IntakeError(
            Refusal.FORMAT_PICKLE,
            "this is a Python pickle (protocol 0/1), which can run code when loaded; upload .safetensors",
        )
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        raise IntakeError(
            Refusal.FORMAT_TORCH_ZIP,
            "this is a zip archive (a torch .pt/.ckpt checkpoint holds pickles inside); upload .safetensors",
        )
    for magic, what in _OTHER_MAGICS.items():
        if head.startswith(magic):
            raise IntakeError(Refusal.FORMAT_UNKNOWN, f"this is {what}, not a safetensors file")
    if len(head) < 8:
        raise IntakeError(Refusal.HEADER_TRUNCATED, f"the file is {len(head)} bytes, too short for a header")
    # safetensors: an 8-byte little-endian header length, then a JSON object that starts with '{'.
    # Other JSON openers go on to header validation, which says precisely what is wrong.
    if len(head) > 8 and head[8:9] not in (b"{", b"[", b" ", b"\n", b"\r", b"\t"):
        raise IntakeError(
            Refusal.FORMAT_UNKNOWN,
            "the file does not start like safetensors (an 8-byte length, then a JSON header)",
        )
    return "safetensors"
