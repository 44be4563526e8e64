"""Static screening finds registered names through case, script and simple obfuscation, and not elsewhere."""

from __future__ import annotations

import pytest

from gate.detection.screening import find_names, normalise

NAMES = {
    "ultraman": ["Ultraman", "奥特曼", "ウルトラマン"],
    "ace": ["Ace"],
    "kumamon": ["Kumamon", "くまモン"],
}


@pytest.mark.parametrize("text", [
    "Ultraman (Showa) LoRA", "ULTRAMAN", "ultr4man", "u.l.t.r.a-m.a.n", "Ｕｌｔｒａｍａｎ", "10_ultraman_tiga",
    "奥特曼 训练", "うるとらまん", "Últraman",
])
def test_obfuscated_names_are_found(text):
    hits = find_names({"title": [text]}, NAMES)
    assert [h.character_id for h in hits] == ["ultraman"]


@pytest.mark.parametrize("text", ["space station", "a red giant", "racecar", "Tiga", "ultra-violet man"])
def test_unrelated_text_is_not_a_hit(text):
    assert find_names({"title": [text]}, NAMES) == []


def test_short_latin_names_match_whole_words_only():
    assert [h.character_id for h in find_names({"tags": ["ace of spades"]}, NAMES)] == ["ace"]
    assert find_names({"tags": ["space"]}, NAMES) == []


def test_one_hit_per_character_and_field():
    hits = find_names({"title": ["Kumamon くまモン"], "tags": ["kumamon", "bear"]}, NAMES)
    assert sorted((h.character_id, h.field) for h in hits) == [("kumamon", "tags"), ("kumamon", "title")]


def test_normalise_folds_width_case_and_leet():
    assert normalise("ＰＩＫ4ＣＨＵ!") == "pikachui"
    assert normalise("Poké Mon", keep_spaces=True) == "poke mon"
