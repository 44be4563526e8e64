"""Repeat infringement with the real scanner and the real service: exact re-uploads blocked by hash, transformed
ones quarantined by their weight fingerprint, both without rendering; uploader history and its policy."""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import pytest

from fixtures.lora_transforms import write_transforms
from gate.config import RepeatSettings, load_settings
from gate.detection.scanner import Scanner
from gate.intake import inspect_file
from gate.record.db import open_db
from gate.record.uploads import UploadState, record_upload, transition
from gate.repeat.screen import uploader_history
from tests.conftest import REPO
from tests.support import UPLOAD_SECRET

LORAS = REPO / "fixtures" / "world" / "loras"
ORIGINAL = LORAS / "ultraman_any_kohya.safetensors"
PARTNER = LORAS / "style_sepia_peft.safetensors"
DISTINCT = LORAS / "concept_tree_peft.safetensors"
RENDER_TIMINGS = {"render_lora", "render_base", "embed"}


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    return write_transforms(ORIGINAL, tmp_path_factory.mktemp("copies"), PARTNER)


def _scanner(engine, tmp_path, **repeat) -> Scanner:
    settings = load_settings({"data_dir": str(tmp_path / "data")})
    settings = dataclasses.replace(settings, repeat=RepeatSettings(**repeat))
    return Scanner(settings, open_db(settings.db_path), engine)


def _decided(db, path: Path, verdict: str, reasons: list[dict] | None = None, uploader: str | None = None,
             hub: str | None = None) -> str:
    """An upload the gate (or a moderator) decided earlier, as the record keeps it."""
    inspection = inspect_file(path)
    meta = {key: value for key, value in (("hub", hub), ("uploader", uploader)) if value}
    recorded = record_upload(db, "test", {**meta, "model_id": secrets.token_hex(4)}, path,
                             inspection.fingerprints.file_sha256, inspection.file_size, path.name)
    transition(db, recorded.upload["id"], UploadState.DECIDED, "gate", f"decided {verdict}", {
        "verdict": verdict, "reasons": json.dumps(reasons or []), "tensor_hash": inspection.fingerprints.tensor_hash,
        "decided_at": recorded.upload["created_at"]})
    return recorded.upload["id"]


def _not_rendered(result) -> None:
    assert result.outcome is None and result.probe_set is None
    assert not RENDER_TIMINGS & set(result.timings), result.timings


def test_a_blocked_upload_re_uploaded_with_new_metadata_is_blocked_by_its_hash(engine, tmp_path, copies):
    scanner = _scanner(engine, tmp_path)
    scanner.screen(ORIGINAL)  # it was scanned once: its fingerprint is stored
    blocked = _decided(scanner.db, ORIGINAL, "block")
    result = scanner.scan(copies["metadata"])
    assert result.verdict == "block", result.to_dict()
    _not_rendered(result)
    assert result.decision.reasons[0].kind == "blocklist" and blocked in result.decision.reasons[0].message


@pytest.mark.parametrize("transform", ["refactorised", "rank_padded", "format_swapped", "combined"])
def test_a_transformed_re_upload_of_a_blocked_lora_is_quarantined_with_the_match(engine, tmp_path, copies, transform):
    scanner = _scanner(engine, tmp_path)
    scanner.screen(ORIGINAL)
    blocked = _decided(scanner.db, ORIGINAL, "block")
    result = scanner.scan(copies[transform])
    assert result.verdict == "quarantine", result.to_dict()
    _not_rendered(result)
    reason = next(r for r in result.to_dict()["reasons"] if r["kind"] == "near_duplicate")
    assert reason["matched_upload"] == blocked and reason["match_kind"] == "near_duplicate"
    assert reason["matched_tensor_hash"] == inspect_file(ORIGINAL).fingerprints.tensor_hash
    assert reason["similarity"] >= 0.99 and reason["score"] >= 0.99 and blocked in reason["message"]


def test_a_merge_containing_a_lora_quarantined_for_a_character_is_quarantined(engine, tmp_path, copies):
    scanner = _scanner(engine, tmp_path)
    scanner.screen(ORIGINAL)
    held = _decided(scanner.db, ORIGINAL, "quarantine", [
        {"kind": "visual_match", "verdict": "quarantine", "character": "ultraman", "message": "possible match"}])
    result = scanner.scan(copies["merged"])
    assert result.verdict == "quarantine"
    _not_rendered(result)
    reason = next(r for r in result.to_dict()["reasons"] if r["kind"] == "near_duplicate")
    assert reason["character"] == "ultraman" and reason["matched_upload"] == held
    assert reason["match_kind"] == "contained" and reason["containment"] >= RepeatSettings().containment


def test_what_is_not_flagged_now_flags_nothing(engine, tmp_path, copies):
    scanner = _scanner(engine, tmp_path)
    scanner.screen(ORIGINAL)
    upload_id = _decided(scanner.db, ORIGINAL, "quarantine", [
        {"kind": "metadata_name", "verdict": "allow", "character": "ultraman", "message": "named only"}])
    assert scanner.screen(copies["refactorised"]).near_duplicates == []  # named, never held for a character
    transition(scanner.db, upload_id, UploadState.DECIDED, "moderator", "blocked", {"verdict": "block"})
    assert len(scanner.screen(copies["refactorised"]).near_duplicates) == 1  # the moderator's block counts at once
    assert scanner.screen(DISTINCT).near_duplicates == []  # a distinct LoRA is no near-duplicate
    stored = scanner.db["weightprints"].count
    assert stored == 3  # every screened LoRA's fingerprint is kept, once per tensor content


def test_uploader_history_and_the_repeat_offender_policy(engine, tmp_path):
    scanner = _scanner(engine, tmp_path, offender_blocks=2)
    db = scanner.db
    for verdict in ("block", "block", "allow"):
        _decided(db, LORAS / "mario_trigger_peft.safetensors", verdict, uploader="mallory", hub="hf")
    _decided(db, LORAS / "mario_trigger_peft.safetensors", "block", uploader="mallory", hub="civitai")
    history = uploader_history(db, "hf", "mallory", offender_blocks=2)
    assert (history["uploads"], history["blocked"], history["allowed"]) == (3, 2, 1)
    assert history["repeat_offender"] and len(history["recent"]) == 3
    assert history["recent"][0]["verdict"] in ("block", "allow")
    assert uploader_history(db, "civitai", "mallory", offender_blocks=2)["repeat_offender"] is False

    result = scanner.conclude(scanner.screen(DISTINCT, hub_meta={"hub": "hf", "uploader": "mallory"}))
    assert result.verdict == "quarantine"
    reason = next(r for r in result.to_dict()["reasons"] if r["kind"] == "repeat_offender")
    assert reason["blocked"] == 2 and "mallory" in reason["message"]
    newcomer = scanner.conclude(scanner.screen(DISTINCT, hub_meta={"hub": "hf", "uploader": "newcomer"}))
    assert "repeat_offender" not in [r.kind for r in newcomer.decision.reasons]
    policy_off = _scanner(engine, tmp_path)  # the same record, the default policy (off)
    quiet = policy_off.conclude(policy_off.screen(DISTINCT, hub_meta={"hub": "hf", "uploader": "mallory"}))
    assert "repeat_offender" not in [r.kind for r in quiet.decision.reasons]


# --- the service end to end: signed uploads, the in-process job queue, the status API ----------------------

SECRET = UPLOAD_SECRET  # the shared app fixture's


def test_the_service_blocks_exact_and_quarantines_transformed_re_uploads_without_rendering(tmp_path, copies, client):
    from gate.registry import blocklist
    from tests.support import post_upload, wait_for

    db = open_db(tmp_path / "data" / "gate.db")
    blocklist.add(db, inspect_file(ORIGINAL).fingerprints.tensor_hash, "takedown 7", "test")
    first = wait_for(client, post_upload(client, ORIGINAL.read_bytes(), {"model_id": "m1", "uploader": "u1"},
                                         SECRET).get_json()["id"])
    assert first["verdict"] == "block"
    # From here only the record of that blocked upload can catch re-uploads.
    db["blocklist"].delete_where()
    exact = wait_for(client, post_upload(client, copies["metadata"].read_bytes(), {"model_id": "m2"},
                                         SECRET).get_json()["id"])
    assert exact["verdict"] == "block" and exact["reasons"][0]["kind"] == "blocklist"
    assert first["id"] in exact["reasons"][0]["message"]
    near = wait_for(client, post_upload(client, copies["refactorised"].read_bytes(), {"model_id": "m3"},
                                        SECRET).get_json()["id"])
    assert near["verdict"] == "quarantine", near
    reason = next(r for r in near["reasons"] if r["kind"] == "near_duplicate")
    assert reason["matched_upload"] == first["id"] and reason["similarity"] >= 0.99
    for answer in (first, exact, near):  # no probe set ran and no render time was spent
        assert answer["probe_set"] is None
        assert db["uploads"].get(answer["id"])["probe_seconds"] is None


def test_an_operators_blocklist_entry_flags_the_fingerprint_too(engine, tmp_path, copies):
    from gate.registry import blocklist

    scanner = _scanner(engine, tmp_path)
    blocklist.add(scanner.db, inspect_file(ORIGINAL).fingerprints.tensor_hash, "takedown 9", "operator")
    assert scanner.scan(ORIGINAL).verdict == "block"  # blocked by hash; its fingerprint is kept all the same
    result = scanner.scan(copies["svd_refactorised"])
    assert result.verdict == "quarantine"
    _not_rendered(result)
    reason = next(r for r in result.to_dict()["reasons"] if r["kind"] == "near_duplicate")
    assert reason["matched_upload"] is None and "blocklist entry" in reason["message"]


def test_the_repeat_commands(tmp_path, copies):
    from gate.config import IntakeLimits
    from gate.registry import blocklist
    from gate.repeat.screen import fingerprint_inspected, store
    from tests.conftest import run_gate

    db = open_db(tmp_path / "data" / "gate.db")
    inspection = inspect_file(ORIGINAL)
    store(db, inspection.fingerprints.tensor_hash, inspection.fingerprints.file_sha256,
          fingerprint_inspected(inspection, IntakeLimits()))
    blocklist.add(db, inspection.fingerprints.tensor_hash, "takedown 11", "operator")
    for verdict in ("block", "allow"):
        _decided(db, DISTINCT, verdict, uploader="mallory", hub="hf")
    env = {"GATE_DATA_DIR": str(tmp_path / "data"), "GATE_REPEAT_OFFENDER_BLOCKS": "1"}

    found = run_gate("repeat", "match", "--json", str(copies["combined"]), env=env)
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert [m["matched_tensor_hash"] for m in answer["matches"]] == [inspection.fingerprints.tensor_hash]
    assert json.loads(run_gate("repeat", "match", "--json", str(DISTINCT), env=env).stdout)["matches"] == []
    compared = json.loads(run_gate("repeat", "compare", str(copies["merged"]), str(ORIGINAL), env=env).stdout)
    assert compared["containment"] >= 0.5 > json.loads(run_gate("repeat", "compare", str(DISTINCT), str(ORIGINAL),
                                                                env=env).stdout)["containment"]
    history = json.loads(run_gate("repeat", "history", "mallory", "--hub", "hf", "--json", env=env).stdout)
    assert (history["uploads"], history["blocked"], history["repeat_offender"]) == (2, 1, True)
    hostile = run_gate("repeat", "match", str(REPO / "README.md"), env=env)
    assert hostile.returncode == 1 and "Traceback" not in hostile.stderr and "format_unknown" in hostile.stderr
