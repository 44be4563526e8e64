"""Every corpus file gets exactly the verdict it was built to get: valid files recognised, hostile ones refused
with their stable code."""

from __future__ import annotations

import json

import pytest

from fixtures.intake_corpus import _cases
from gate.errors import Refusal
from gate.intake import inspect_file

CASES = {case.name: case for case in _cases()}


def test_corpus_has_a_hostile_file_for_most_refusal_codes():
    hostile = [c for c in CASES.values() if c.expect != "ok"]
    assert len(hostile) >= 25
    covered = {c.expect for c in hostile}
    # Codes that need a configured limit or an unreadable file are tested in test_limits.py instead.
    assert set(Refusal) - covered <= {Refusal.FILE_TOO_LARGE, Refusal.TOO_MANY_TENSORS, Refusal.FILE_UNREADABLE}


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_file_gets_its_verdict(corpus_dir, name):
    case = CASES[name]
    result = inspect_file(corpus_dir / f"{name}.safetensors").to_dict()
    json.dumps(result)  # the result is always serialisable
    if case.expect == "ok":
        assert result["ok"], result.get("error")
        assert result["format"] == case.format
        assert result["base_family"] == case.family
        # OFT rotates and LyCORIS full stores the whole difference: neither has a rank.
        assert result["rank"] is None if case.format in ("oft", "full") else result["rank"] in (1, 4)
        assert len(result["tensor_hash"]) == len(result["file_sha256"]) == 64
        assert result["family"]["mismatch"] is case.mismatch
        assert bool(result["warnings"]) is (case.mismatch or case.warnings)
    else:
        assert not result["ok"]
        assert result["error"]["code"] == case.expect, result["error"]
        assert result["error"]["message"]
        assert "Traceback" not in result["error"]["message"]


def test_dora_and_lycoris_are_described(corpus_dir):
    dora = inspect_file(corpus_dir / "sdxl_diffusers_dora.safetensors").to_dict()
    assert dora["lora"]["dora"] is True
    assert dora["lora"]["components"] == {"unet": 64, "text_encoder": 12, "text_encoder_2": 12}
    loha = inspect_file(corpus_dir / "sdxl_loha.safetensors").to_dict()
    assert loha["lora"]["dora"] is False and loha["format"] == "loha"


def test_family_evidence_names_what_was_seen(corpus_dir):
    sdxl = inspect_file(corpus_dir / "sdxl_kohya.safetensors").to_dict()["family"]
    assert "cross-attention width 2048" in sdxl["evidence"]
    assert sdxl["claimed"] == "sdxl" and sdxl["claimed_by"] == "modelspec.architecture"
