"""JSON from outside the gate, read with its nesting bounded before the parser sees it.

Python's json parser recurses: a body of a few thousand '[' raises RecursionError, which no caller expects (a
500 with a traceback). Every JSON the gate reads from a hub, a rights holder, an uploader or a page's query
goes through `loads`, as intake bounds a safetensors header before parsing it.
"""

from __future__ import annotations

import json
import re

from gate.errors import GateError

MAX_DEPTH = 32  # the deepest document the gate accepts anywhere (its own are 4 deep at most)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class JsonInvalid(GateError):
    code = "json_invalid"


def depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in `text` (brackets inside strings do not count); stops counting once
    past `limit`, so a hostile document costs one pass at most."""
    level = deepest = 0
    for found in _BRACKETS.finditer(_STRINGS.sub('""', text)):
        level += 1 if found.group() in "[{" else -1
        if level > deepest:
            deepest = level
            if deepest > limit:
                break
    return deepest


def loads(raw: bytes | str, what: str, code: str = "json_invalid", max_depth: int = MAX_DEPTH) -> object:
    """Parse JSON from outside; JsonInvalid (with `code`) if it is not UTF-8 JSON, or `json_too_deep` if it
    nests deeper than `max_depth`."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError:
        raise JsonInvalid(f"{what} is not UTF-8 text", code) from None
    if depth(text, max_depth) > max_depth:
        raise JsonInvalid(f"{what} nests deeper than {max_depth} levels", "json_too_deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise JsonInvalid(f"{what} is not valid JSON", code) from None
