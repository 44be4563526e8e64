"""Static screening: does a LoRA's own text (title, trigger, tags, folders) name a registered character?

Names are compared after normalisation that is case-, width- and script-aware and undoes the simple
obfuscations uploaders use: leetspeak (ultr4man), separators (u.l.t.r.a-man), accents, fullwidth
letters, hiragana written for katakana.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_LEET = str.maketrans({"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "0": "o", "5": "s", "$": "s",
                       "7": "t", "+": "t", "8": "b", "9": "g", "|": "l"})
_SEPARATORS = re.compile(r"[\s\W_]+", re.UNICODE)
# Latin names shorter than this must match a whole word: "Ace" should not hit "space".
_MIN_SUBSTRING = 5


def _hiragana_to_katakana(text: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else c for c in text)


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalise(text: str, *, keep_spaces: bool = False) -> str:
    """Fold a name to a comparable key: NFKC, casefold, accents off, kana unified, leetspeak undone."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _hiragana_to_katakana(_strip_accents(text))
    text = text.translate(_LEET)
    return _SEPARATORS.sub(" " if keep_spaces else "", text).strip()


def _is_latin(key: str) -> bool:
    return key.isascii()


@dataclass(frozen=True)
class NameHit:
    """A registered name found in a LoRA's text."""

    character_id: str
    name: str  # the registered name or alias that matched
    field: str  # where it was found
    text: str  # the text it was found in (truncated)


def find_names(texts: dict[str, list[str]], names: dict[str, list[str]]) -> list[NameHit]:
    """Every (character, field) whose name or alias appears in the texts; one hit per pair."""
    hits: dict[tuple[str, str], NameHit] = {}
    prepared = {
        field: [(text, normalise(text), f" {normalise(text, keep_spaces=True)} ") for text in values if text]
        for field, values in texts.items()
    }
    for character_id, aliases in names.items():
        for alias in aliases:
            key = normalise(alias)
            if not key:
                continue
            word = f" {normalise(alias, keep_spaces=True)} "
            for field, entries in prepared.items():
                if (character_id, field) in hits:
                    continue
                for text, squashed, spaced in entries:
                    found = (key in squashed) if (len(key) >= _MIN_SUBSTRING or not _is_latin(key)) else (
                        word in spaced)
                    if found:
                        hits[(character_id, field)] = NameHit(character_id, alias, field, text[:200])
                        break
    return list(hits.values())
