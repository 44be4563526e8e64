"""Back-catalogue screening with real parts: fixture-world LoRAs scanned by the real (tiny) models on CPU, their
probe embeddings stored in a real SQLite record, then a character registered afterwards screened against them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gate.catalogue import screening as catalogue
from gate.catalogue.index import CatalogueIndex, stored_vectors
from gate.catalogue.screening import character_reports, registry_changed
from gate.config import load_settings
from gate.detection.matching import Thresholds
from gate.detection.scanner import Scanner
from gate.pipeline.outcome import record_decision
from gate.record.db import open_db, writing
from gate.record.uploads import get_upload, record_upload
from gate.registry.characters import add_character
from gate.registry.world import seed_registry
from tests.conftest import world_lora


def _record_and_scan(db, settings, scanner, world, lora_id: str) -> tuple[str, object]:
    """An upload of a fixture LoRA, scanned and decided as the conclude job does it (which stores its vectors)."""
    path = world.path(world_lora(world, id=lora_id)["path"])
    data = path.read_bytes()
    upload = record_upload(db, "test", {"hub": "fixture-hub", "model_id": lora_id, "title": lora_id}, path,
                           hashlib.sha256(data).hexdigest(), len(data), path.name).upload
    result = scanner.scan(path, filename=path.name, conclude=False)
    record_decision(settings, db, scanner, upload["id"], result)
    return upload["id"], result


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, engine, world):
    """A record with a character LoRA of an unregistered original and a clean style LoRA, both scanned."""
    settings = load_settings({"data_dir": str(tmp_path_factory.mktemp("catalogue"))})
    db = open_db(settings.db_path)
    seed_registry(db, world, settings.references_dir)
    scanner = Scanner(settings, db, engine)
    character_upload, character_result = _record_and_scan(db, settings, scanner, world, "pebble_sprite_trigger_peft")
    clean_upload, _ = _record_and_scan(db, settings, scanner, world, "style_sepia_peft")
    return settings, db, scanner, character_upload, character_result, clean_upload


def _references_from(result, directory: Path, count: int = 4) -> list[Path]:
    """What the rights holder registers: pictures of the character as the LoRA draws it (the renders the LoRA
    changed most from the base render of the same probe)."""
    outcome = result.outcome
    change = (outcome.lora_embeddings * outcome.base_embeddings).sum(axis=1)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, index in enumerate(np.argsort(change)[:count]):
        path = directory / f"ref_{rank}.png"
        Image.fromarray(outcome.lora_images[index]).save(path)
        paths.append(path)
    return paths


def test_a_concluded_scan_stores_its_probe_embeddings(scanned):
    settings, db, scanner, character_upload, result, _ = scanned
    row = next(db["catalogue_scans"].rows_where("upload_id = ?", [character_upload]))
    assert row["renders"] == len(result.outcome.probes) and row["dim"] == result.outcome.lora_embeddings.shape[1]
    assert row["embedder"] == scanner.engine.embedder_id and row["probe_set"] == result.probe_set
    assert row["base_family"] == "fixture"
    lora, base, probes = stored_vectors(db, character_upload)
    assert lora.shape == base.shape == result.outcome.lora_embeddings.shape
    np.testing.assert_allclose(lora, result.outcome.lora_embeddings, atol=2e-3)
    np.testing.assert_allclose(base, result.outcome.base_embeddings, atol=2e-3)
    assert probes[0]["prompt"] == result.outcome.probes[0].prompt


def test_a_character_registered_later_quarantines_its_lora_without_rendering(scanned, tmp_path, monkeypatch):
    settings, db, scanner, character_upload, result, clean_upload = scanned
    assert get_upload(db, character_upload)["verdict"] == "allow"
    assert get_upload(db, clean_upload)["verdict"] == "allow"

    def no_rendering(*args, **kwargs):
        raise AssertionError("screening must not render")

    from probes.render import Renderer

    monkeypatch.setattr(Renderer, "render", no_rendering)
    monkeypatch.setattr(Renderer, "render_base", no_rendering)
    add_character(db, settings.references_dir, name="Pebble Sprite", rights_holder="Pebble Works",
                  policy="quarantine", references=_references_from(result, tmp_path), character_id="pebble_sprite",
                  embed=scanner.engine.embed, embedder_id=scanner.engine.embedder_id)
    outbox_before = db["outbox"].count
    screening = registry_changed(db, "pebble_sprite", settings, cause="registered")

    assert screening.screened == 2 and screening.candidates >= 1
    assert [hit.upload_id for hit in screening.hits] == [character_upload]
    upload = get_upload(db, character_upload)
    assert upload["verdict"] == "quarantine" and upload["state"] == "decided"
    reason = json.loads(upload["reasons"])[-1]
    assert reason["character"] == "pebble_sprite" and reason["kind"] == "visual_match"
    assert get_upload(db, clean_upload)["verdict"] == "allow"
    # Journalled with its evidence, and the hub owed a message, with the change.
    event = list(db["upload_events"].rows_where("upload_id = ? and actor = 'screening'", [character_upload]))[-1]
    detail = json.loads(event["detail"])
    assert detail["verdict_before"] == "allow" and detail["verdict_after"] == "quarantine"
    assert len(detail["renders"]) == detail["matched"] >= 4
    assert all({"prompt", "seed", "score", "lift"} <= set(r) for r in detail["renders"])
    assert db["outbox"].count == outbox_before + 1
    message = list(db["outbox"].rows_where("upload_id = ?", [character_upload], order_by="id desc"))[0]
    assert json.loads(message["payload"])["verdict"] == "quarantine"
    # The rights holder's report.
    report = character_reports(db, "pebble_sprite")[0]
    assert report["hits"][0]["upload_id"] == character_upload and report["hits"][0]["changed"]
    assert report["hits"][0]["model_id"] == "pebble_sprite_trigger_peft"

    # Screening again (the character changed) finds it again but changes nothing: screening only escalates.
    again = registry_changed(db, "pebble_sprite", settings, cause="updated")
    assert [hit.upload_id for hit in again.hits] == [character_upload] and again.changed == 0
    assert db["outbox"].count == outbox_before + 1


def test_the_index_search_finds_what_the_live_rule_matches_and_skips_replaced_scans():
    rng = np.random.default_rng(7)
    dim, renders = 16, 12
    generic_base = rng.normal(size=(renders, dim)).astype(np.float32)
    generic_base /= np.linalg.norm(generic_base, axis=1, keepdims=True)
    reference = rng.normal(size=(1, dim)).astype(np.float32)
    reference /= np.linalg.norm(reference)
    lora = {f"up_{i}": generic_base + 0.05 * rng.normal(size=(renders, dim)).astype(np.float32) for i in range(50)}
    lora["up_7"][3] = reference[0]  # draws the character in one render
    index = CatalogueIndex("embedder@test")
    index.add(list(lora), list(lora.values()), [generic_base] * len(lora))
    assert len(index.base) == renders  # base renders stored once however many LoRAs share them
    thresholds = Thresholds(render_score=0.9, lift=0.1, quarantine_matches=1, block_matches=2, block_score=0.95)
    assert index.candidates(reference, thresholds) == ["up_7"]
    index.add(["up_7"], [generic_base.copy()], [generic_base])  # rescanned: now it draws nothing
    assert index.candidates(reference, thresholds) == []
    assert index.loras == 50


def test_a_saved_index_is_mapped_back_and_keeps_growing(tmp_path):
    rng = np.random.default_rng(5)
    vectors = {f"up_{i}": rng.normal(size=(6, 8)).astype(np.float32) for i in range(20)}
    vectors = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vectors.items()}
    index = CatalogueIndex("embedder@test")
    index.add(list(vectors)[:10], list(vectors.values())[:10], list(vectors.values())[:10])
    index.last_id = 10
    index.save(tmp_path / "index")
    loaded = CatalogueIndex.load(tmp_path / "index", "embedder@test")
    assert isinstance(loaded.lora, np.memmap) and loaded.loras == 10 and loaded.last_id == 10
    assert CatalogueIndex.load(tmp_path / "index", "another@embedder") is None
    loaded.add(list(vectors)[10:], list(vectors.values())[10:], list(vectors.values())[10:])
    thresholds = Thresholds(render_score=0.99, lift=-1.0, quarantine_matches=1, block_matches=2, block_score=1.0)
    target = vectors["up_15"][2:3]
    assert loaded.candidates(target, thresholds) == ["up_15"]
    assert loaded.candidates(vectors["up_3"][0:1], thresholds) == ["up_3"]


def test_the_compact_search_misses_no_render_the_exact_rule_would_match():
    rng = np.random.default_rng(3)
    dim, loras, renders = 64, 400, 20
    centre = rng.normal(size=dim)
    lora = [(centre * 0.3 + rng.normal(size=(renders, dim))) for _ in range(loras)]
    lora = [(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16) for v in lora]
    base = [np.roll(v, 1, axis=0) for v in lora]
    refs = centre * 0.3 + rng.normal(size=(6, dim))
    refs = (refs / np.linalg.norm(refs, axis=1, keepdims=True)).astype(np.float32)
    index = CatalogueIndex("embedder@test")
    index.add([f"up_{i}" for i in range(loras)], lora, base)
    best = np.stack([(v.astype(np.float32) @ refs.T).max(axis=1) for v in lora])  # exact, (loras, renders)
    base_best = np.stack([(v.astype(np.float32) @ refs.T).max(axis=1) for v in base])
    for quantile in (0.9, 0.99, 0.999):
        thresholds = Thresholds(render_score=float(np.quantile(best, quantile)), lift=0.02, quarantine_matches=1,
                                block_matches=2, block_score=1.0)
        exact = {f"up_{i}" for i in range(loras)
                 if ((best[i] >= thresholds.render_score) & (best[i] - base_best[i] >= thresholds.lift)).any()}
        found = set(index.candidates(refs, thresholds))
        assert exact and exact <= found
        assert len(found) < loras  # and it still filters


def test_update_and_reports_from_the_command_line(scanned, tmp_path):
    from click.testing import CliRunner

    from gate.cli import main

    settings, db, scanner, character_upload, result, _ = scanned
    if not db["characters"].count_where("id = ?", ["pebble_sprite"]):  # the test that registers it ran elsewhere
        add_character(db, settings.references_dir, name="Pebble Sprite", rights_holder="Pebble Works",
                      policy="quarantine", references=_references_from(result, tmp_path), character_id="pebble_sprite",
                      embed=scanner.engine.embed, embedder_id=scanner.engine.embedder_id)
        registry_changed(db, "pebble_sprite", settings, cause="registered")
    runner = CliRunner(env={"GATE_DATA_DIR": str(settings.data_dir), "REDIS_URL": "", "GATE_REDIS_URL": ""})
    result = runner.invoke(main, ["characters", "update", "pebble_sprite", "--add-alias", "pbbl sprite", "--json"])
    assert result.exit_code == 0, result.output
    screening = json.loads(result.output.strip().splitlines()[-1])
    assert [hit["upload_id"] for hit in screening["hits"]] == [character_upload] and screening["changed"] == 0
    reports = json.loads(runner.invoke(main, ["characters", "reports", "pebble_sprite", "--json"]).output)
    assert reports[0]["cause"] == "updated" and reports[0]["hits"][0]["upload_id"] == character_upload
    bad = runner.invoke(main, ["characters", "update", "pebble_sprite", "--remove-ref", "abc"])
    assert bad.exit_code == 1 and "reference_not_found" in bad.output and "Traceback" not in bad.output


def test_the_likelihood_probe_screens_the_catalogue_for_a_character_registered_later(scanned, world):
    settings, db, scanner, _, _, clean_upload = scanned
    upload_id, _ = _record_and_scan(db, settings, scanner, world, "moss_knight_any_kohya")
    assert get_upload(db, upload_id)["verdict"] == "allow"  # an original character, not registered yet
    knight = next(c for c in world.characters() if c["id"] == "moss_knight")
    add_character(db, settings.references_dir, name=knight["name"], rights_holder=knight["rights_holder"],
                  policy="block", references=[world.path(p) for p in knight["references"]],
                  character_id="moss_knight", embed=scanner.engine.embed, embedder_id=scanner.engine.embedder_id)
    outbox_before = db["outbox"].count

    screening = catalogue.likelihood_screen(db, "moss_knight", settings, cause="registered", scanner=scanner)

    decided = db.execute("select count(*) from uploads where state = 'decided' and verdict != 'block'").fetchone()[0]
    assert screening.screened == decided + 1  # every probed, decided upload not blocked yet
    assert [hit.upload_id for hit in screening.hits] == [upload_id] and screening.changed == 1
    run = db["screenings"].get(screening.id)
    assert (run["done"], run["hits"], run["changed"]) == (screening.screened, 1, 1)
    upload = get_upload(db, upload_id)
    assert upload["verdict"] == "block" and upload["state"] == "decided"
    reason = json.loads(upload["reasons"])[-1]
    assert reason["kind"] == "likelihood_match" and reason["character"] == "moss_knight"
    assert reason["certainty"] == "clear" and reason["gain"] >= scanner.thresholds.likelihood_block
    assert get_upload(db, clean_upload)["verdict"] == "allow"
    assert db["outbox"].count == outbox_before + 1
    event = list(db["upload_events"].rows_where("upload_id = ? and actor = 'screening'", [upload_id]))[-1]
    assert json.loads(event["detail"])["likelihood"]["gain"] == reason["gain"]
    report = character_reports(db, "moss_knight")[0]
    assert report["cause"] == "registered: likelihood" and report["hits"][0]["likelihood"]["prompt"]
    # The rights holder's list of uploads that matched shows it, by its gain (no render matched it).
    from gate.registry.rights import matches

    listed = [m for m in matches(db, knight["rights_holder"], "moss_knight") if m["id"] == upload_id]
    assert len(listed) == 1 and listed[0]["gain"] == reason["gain"]

    # Again: the blocked upload is no longer screened, and nothing changes.
    again = catalogue.likelihood_screen(db, "moss_knight", settings, cause="updated", scanner=scanner)
    assert again.screened == decided and again.hits == []


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_likelihood_screening_whose_jobs_were_lost_resumes_with_what_is_left(scanned, world, tmp_path):
    """The run's jobs go onto a real (private) Redis and no worker ever takes them, as when the workers die and
    Redis restarts; resuming judges only the uploads left, and an upload judged twice is counted once."""
    from gate.queues import CATALOGUE, RedisQueues
    from tests.support import RedisServer

    settings, db, scanner, _, _, _ = scanned
    upload_id, _ = _record_and_scan(db, settings, scanner, world, "captain_comet_any_peft")
    comet = next(c for c in world.characters() if c["id"] == "captain_comet")
    add_character(db, settings.references_dir, name=comet["name"], rights_holder=comet["rights_holder"],
                  policy="quarantine", references=[world.path(p) for p in comet["references"]],
                  character_id="captain_comet", embed=scanner.engine.embed, embedder_id=scanner.engine.embedder_id)
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        queues = RedisQueues(redis.url)
        queued = catalogue.likelihood_screen(db, "captain_comet", settings, cause="registered", scanner=scanner,
                                             queues=queues)
        on_redis = queues.queue(CATALOGUE)
        assert queued.screened > 1 and on_redis.count == queued.screened
        assert db["screenings"].get(queued.id)["done"] == 0

        # One upload is judged (its job ran) before everything is lost; it is not judged again.
        first = db.execute("select upload_id from screening_items where screening_id = ? order by rowid limit 1",
                           [queued.id]).fetchone()[0]
        character = catalogue.get_character(db, "captain_comet")
        references = catalogue._character_references(scanner, "captain_comet")
        for _ in range(2):  # its job delivered twice: counted once
            catalogue._likelihood_screen_one(db, scanner, queued.id, character, references, first)
        assert db["screenings"].get(queued.id)["done"] == 1
        # While their jobs wait in Redis, resuming leaves them to it; once Redis has lost them, it queues them.
        assert catalogue.likelihood_resume(db, queued.id, settings, queues=queues).screened == 0
        on_redis.empty()

        requeued = catalogue.likelihood_resume(db, queued.id, settings, scanner=scanner, queues=queues)
        assert requeued.screened == queued.screened - 1 and on_redis.count == requeued.screened
    finally:
        redis.stop()

    resumed = catalogue.likelihood_resume(db, queued.id, settings, scanner=scanner)  # judged here
    assert resumed.screened == queued.screened - 1 and [h.upload_id for h in resumed.hits] == [upload_id]
    run = db["screenings"].get(queued.id)
    assert (run["done"], run["hits"], run["changed"]) == (queued.screened, 1, 1)
    assert get_upload(db, upload_id)["verdict"] == "quarantine"
    # The operator's command: nothing is left, and an unknown run is a typed error, not a traceback.
    from click.testing import CliRunner

    from gate.cli import main

    runner = CliRunner(env={"GATE_DATA_DIR": str(settings.data_dir), "REDIS_URL": "", "GATE_REDIS_URL": ""})
    finished = runner.invoke(main, ["catalogue", "resume", str(queued.id), "--json"])
    assert finished.exit_code == 0, finished.output
    assert json.loads(finished.stdout)["screened"] == 0
    unknown = runner.invoke(main, ["catalogue", "resume", "999999"])
    assert unknown.exit_code == 1 and "screening_failed" in unknown.output and "Traceback" not in unknown.output
    no_redis = runner.invoke(main, ["catalogue", "resume", str(queued.id), "--queue"])
    assert no_redis.exit_code == 1 and "needs Redis" in no_redis.output
    # Runs it cannot carry on faithfully are refused, saying why: one from before its uploads were recorded,
    # one made with another probe set.
    for embedder, items, words in ((run["embedder"], [], "predates"), ("other-v9@0", [upload_id], "ran with other")):
        with writing(db):
            other = db["screenings"].insert({**run, "id": None, "embedder": embedder}).last_pk
            db["screening_items"].insert_all({"screening_id": other, "upload_id": u, "state": "pending"}
                                             for u in items)
        with pytest.raises(catalogue.ScreeningError, match=words):
            catalogue.likelihood_resume(db, other, settings, scanner=scanner)


def test_a_new_characters_gain_is_judged_beside_the_likelihood_matches_an_upload_already_holds():
    from gate.detection.decisions import CharacterPolicy, Verdict, decide
    from probes.likelihood import CharacterGain

    policies = {c: CharacterPolicy(c, c.upper(), Verdict.BLOCK) for c in "abcdef"}
    thresholds = Thresholds(0.8, 0.0, 3, 4, 0.9, likelihood_quarantine=0.1, likelihood_block=0.2)
    held = decide(matches=[], name_hits=[], characters=policies, thresholds=thresholds,
                  likelihood=[CharacterGain(c, 0.3, "a character", (0.3,)) for c in "abc"])
    stored = catalogue._stored_gains({"reasons": json.dumps([r.to_dict() for r in held.reasons])})
    assert [(g.character_id, g.gain) for g in stored] == [("a", 0.3), ("b", 0.3), ("c", 0.3)]
    # A fourth character the LoRA makes likelier: with the three it already holds, a shared style.
    judged = decide(matches=[], name_hits=[], characters=policies, thresholds=thresholds,
                    likelihood=[CharacterGain("d", 0.3, "a character", (0.3,)), *stored])
    assert {r.verdict for r in judged.reasons} == {Verdict.QUARANTINE}
