"""Scans of the fixture world's LoRAs with the real models: the verdicts and reasons a hub would get."""

from __future__ import annotations

import json

from tests.conftest import run_gate, world_lora


def _scan(scanner, world, **wanted):
    lora = world_lora(world, **wanted)
    return lora, scanner.scan(world.path(lora["path"]))


def test_a_character_lora_that_always_draws_it_gets_its_policy(scanner, world):
    lora, result = _scan(scanner, world, kind="character", trigger=None, expected="block", held_back=False)
    assert result.verdict == "block", result.to_dict()
    # The committed world's renders are too weak to be clear visual evidence (issue 4); the likelihood probe
    # (the LoRA makes the character's references likelier) is.
    clear = [r for r in result.decision.reasons if r.verdict == "block"]
    assert [r.character_id for r in clear] == [lora["character"]] and "clear match" in clear[0].message


def test_a_clean_style_lora_is_allowed(scanner, world):
    _, result = _scan(scanner, world, kind="style", metadata_style="honest")
    assert result.verdict == "allow", result.to_dict()
    [reason] = result.decision.reasons  # an allow has its reason too
    assert reason.kind == "nothing_shown" and "strongest likelihood gain" in reason.message


def test_a_misleading_title_alone_does_not_quarantine(scanner, world):
    _, result = _scan(scanner, world, kind="concept", metadata_style="misleading")
    assert result.verdict == "allow", result.to_dict()
    assert [r.kind for r in result.decision.reasons] == ["metadata_name", "nothing_shown"]
    # The character the title names is measured on all its references, whatever the likelihood screen says.
    gains = {g.character_id: g for g in result.outcome.likelihood}
    assert not gains[result.decision.reasons[0].character_id].screened


def test_refused_and_unprobeable_files(scanner, corpus_dir):
    refused = scanner.scan(corpus_dir / "pickle_disguised.safetensors")
    assert refused.decision is None and refused.to_dict()["error"]["code"] == "format_pickle"
    lokr = scanner.scan(corpus_dir / "sd15_lokr.safetensors")
    assert lokr.verdict == "quarantine"
    assert lokr.decision.reasons[0].kind == "not_probed"


def test_honest_metadata_is_named_in_the_reasons(scanner, world):
    lora, result = _scan(scanner, world, kind="character", metadata_style="honest", trigger=None)
    named = [r for r in result.decision.reasons if r.character_id == lora["character"]]
    assert any("metadata names" in r.message for r in named), result.to_dict()
    assert result.outcome is not None and len(result.outcome.probes) == len(result.outcome.lora_images)


def test_cli_scan_json_and_evidence(world, tmp_path, scan_settings):
    lora = world_lora(world, kind="character", trigger=None, expected="block", held_back=False)
    done = run_gate("scan", "--json", "--evidence", str(tmp_path / "ev"), str(world.path(lora["path"])),
                    env={"GATE_DATA_DIR": str(tmp_path / "data")}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # The console carries the gate's own lines, not the model libraries' chatter (probes/quiet.py).
    for noise in ("No LoRA keys", "torchvision", "it/s]", "Loading weights"):
        assert noise not in done.stderr, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["verdict"] == "block"
    assert result["reasons"] and all({"kind", "verdict", "message"} <= set(r) for r in result["reasons"])
    assert result["probe_set"].startswith("fixture-v3@")
    assert result["intake"]["format"] == lora["format"] and len(result["intake"]["tensor_hash"]) == 64
    assert {"intake", "render_base", "render_lora", "likelihood", "embed", "match", "total"} <= set(result["timings"])
    assert (tmp_path / "ev" / "contact_sheet.png").stat().st_size > 1000
    page = (tmp_path / "ev" / "index.html").read_text()
    assert "reference" in page and "Likelihood probe" in page and "What the LoRA draws" in page
    assert len(list((tmp_path / "ev").glob("drawn_0?.png"))) == 6
    evidence = json.loads((tmp_path / "ev" / "evidence.json").read_text())
    # The flagged character's renders lead the sheet, and its gain leads the likelihood table.
    assert evidence["rows"][0]["character"] == lora["character"]
    assert evidence["likelihood"][0]["character_id"] == lora["character"] and evidence["likelihood"][0]["gain"] > 0
    # What the probe measured against: the registry snapshot's version, the whole of its 11 characters.
    scope = evidence["scope"]
    assert scope["registry"].startswith("reg-") and scope["characters"] == scope["shortlisted"] == 11
    assert lora["character"] in scope["measured"] and f"Measured against registry {scope['registry']}" in page


def test_a_blocklisted_reupload_with_new_metadata_is_blocked_without_rendering(scanner, world, tmp_path):
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    from gate.intake import inspect_file
    from gate.registry import blocklist

    lora = world_lora(world, kind="style", metadata_style="honest")
    original = world.path(lora["path"])
    blocklist.add(scanner.db, inspect_file(original).fingerprints.tensor_hash, "takedown notice 42", "test")
    renamed = tmp_path / "totally_new_name.safetensors"
    save_file({k: v.numpy() for k, v in load_file(original).items()}, renamed, metadata={"ss_output_name": "fresh"})
    try:
        result = scanner.scan(renamed)
    finally:
        scanner.db["blocklist"].delete_where()
    assert result.verdict == "block"
    assert result.outcome is None  # nothing was rendered
    assert result.decision.reasons[0].kind == "blocklist" and "takedown notice 42" in result.decision.reasons[0].message


def test_a_stripped_trigger_lora_is_flagged_and_its_evidence_names_the_recovered_trigger(scanner, world, tmp_path):
    from gate.detection.evidence import write_evidence

    # Astro Boy's shipped LoRA: text encoder trained on a trigger the stripped file does not declare.
    lora, result = _scan(scanner, world, character="astro_boy", metadata_style="stripped")
    assert result.verdict in ("block", "quarantine"), result.to_dict()
    [own] = [g for g in result.outcome.likelihood if g.character_id == "astro_boy"]
    assert own.recovered and own is result.outcome.likelihood[0]
    [reason] = [r for r in result.decision.reasons if r.kind == "likelihood_match"]
    assert reason.character_id == "astro_boy" and reason.details["recovered_trigger"] == own.prompt
    write_evidence(result, scanner.characters, tmp_path / "ev", thresholds=scanner.thresholds)
    evidence = json.loads((tmp_path / "ev" / "evidence.json").read_text())
    assert evidence["likelihood"][0]["recovered"] is True
    assert "recovered trigger" in (tmp_path / "ev" / "index.html").read_text()
