"""Metadata is untrusted: one malformed field becomes a warning, never a refusal of the file."""

from __future__ import annotations

import json

from gate.intake.metadata import parse_metadata


def test_kohya_fields_are_typed():
    meta = parse_metadata({
        "ss_output_name": "ultraman_v2", "ss_network_dim": "32", "ss_network_alpha": "16.0",
        "ss_tag_frequency": json.dumps({"10_ultraman": {"ultraman": 30, "red": 12}, "5_misc": {"red": 3}}),
        "ss_dataset_dirs": json.dumps({"10_ultraman": {"n_repeats": 10, "img_count": 30}}),
        "ss_network_args": json.dumps({"conv_dim": "4"}),
        "modelspec.trigger_phrase": "ultr4man, red giant", "modelspec.title": "Hero", "vendor.key": "kept",
    })
    assert meta.output_name == "ultraman_v2" and meta.network_dim == 32 and meta.network_alpha == 16.0
    assert meta.top_tags[:2] == [("ultraman", 30), ("red", 15)]
    assert meta.dataset_dirs["10_ultraman"]["img_count"] == 30
    assert meta.network_args == {"conv_dim": "4"}
    assert meta.trigger_phrases == ["ultr4man", "red giant"]
    assert meta.other == {"vendor.key": "kept"}
    assert not meta.warnings
    assert "ultr4man" in meta.texts() and "10_ultraman" in meta.texts()


def test_double_encoded_tag_frequency_is_read():
    inner = json.dumps({"dir": {"tag": 2}})
    assert parse_metadata({"ss_tag_frequency": json.dumps(inner)}).top_tags == [("tag", 2)]


def test_malformed_fields_become_warnings():
    meta = parse_metadata({
        "ss_tag_frequency": '{"dir": {"ok": 3, "bad": "many", "neg": -1, "flag": true}, "x": [1]}',
        "ss_network_dim": "lots", "ss_network_alpha": "nan-ish", "ss_dataset_dirs": "[[[",
        "ss_network_args": '"' + "[" * 5000 + '"',
    })
    assert meta.top_tags == [("ok", 3)]
    assert meta.network_dim is None and meta.network_alpha is None and meta.dataset_dirs == {}
    assert len(meta.warnings) == 5
