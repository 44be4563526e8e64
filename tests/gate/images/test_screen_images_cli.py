"""`gate screen-images` and `gate calibrate --images`, in fresh processes, on the fixture world's held-back
images (drawings the thresholds were never fitted on) with the real embedder."""

from __future__ import annotations

import json
import shutil
import zipfile

from fixtures import image_truth
from tests.conftest import REPO, run_gate
from tests.support import documented, without_torch


def _held_back(kind: str, character: str | None = None) -> list:
    return [e["path"] for e in image_truth.load(split="held_back", kinds=(kind,))
            if character is None or e["character"] == character]


def _zip(path, files) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            archive.write(file, file.name)
    return str(path)


def test_a_training_set_with_a_characters_drawings_is_flagged_with_evidence(tmp_path):
    drawings = _held_back("character", "ultraman")[:8]
    archive = _zip(tmp_path / "set.zip", drawings + _held_back("generic")[:32])
    done = run_gate("screen-images", archive, "--json", "--evidence", str(tmp_path / "ev"),
                    env={"GATE_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr[-2000:]
    answer = documented(json.loads(done.stdout), "screened_images")
    assert answer["verdict"] in ("quarantine", "block") and answer["counts"]["images"] == 40
    [reason] = [r for r in answer["reasons"] if r["kind"] == "image_match"]
    assert reason["character"] == "ultraman" and (reason["images"] >= reason["needed"] or reason["strong"])
    matched = [i for i in answer["images"] if i["matched"]]
    assert all(i["name"].startswith("ultraman_") for i in matched if i["matched"]["character"] == "ultraman")
    page = (tmp_path / "ev" / "index.html").read_text()
    assert "Ultraman" in page and "image_00000.png" in page and (tmp_path / "ev" / "reference_00000.png").exists()


def test_generic_scenes_alone_are_allowed_with_a_reason(tmp_path):
    done = run_gate("screen-images", *map(str, _held_back("generic")[:40]), env={"GATE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ALLOW: 40 images")
    assert "fewer for any one than chance" in done.stdout or "none of 40 images resembles" in done.stdout


def test_a_hostile_archive_is_refused_before_any_model_loads(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../escape.png", b"x")
    env = {"GATE_DATA_DIR": str(tmp_path / "data"), **without_torch(tmp_path)}
    done = run_gate("screen-images", str(path), "--json", env=env)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert documented(json.loads(done.stdout), "error_answer")["error"]["code"] == "bundle_path_unsafe"


def test_calibrate_images_adds_its_section_and_keeps_the_lora_thresholds(tmp_path):
    target = tmp_path / "calibration.json"
    shutil.copy(REPO / "fixtures" / "world" / "calibration.json", target)
    before = json.loads(target.read_text())
    done = run_gate("calibrate", "--images", "--out", str(target), env={"GATE_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads(target.read_text())
    assert after["thresholds"] == before["thresholds"]  # the LoRA side untouched
    fitted = after["images"]["thresholds"]
    assert 0 < fitted["score"] < fitted["block_score"] <= 1 and fitted["provenance"]["negatives"] >= 400
    assert fitted["score"] == before["images"]["thresholds"]["score"]  # the world's file is what this fits


def test_a_character_small_in_a_corner_of_a_bigger_picture_is_found_and_shown_where_it_is(tmp_path):
    from PIL import Image

    scene = Image.open(_held_back("generic")[0]).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    scene.paste(Image.open(REPO / "fixtures" / "world" / "characters" / "ultraman" / "ref_00.png").convert("RGB"),
                (0, 32))  # the rights holder's own art, a quarter of the picture, bottom left
    scene.save(tmp_path / "gallery.png")
    done = run_gate("screen-images", str(tmp_path / "gallery.png"), "--json", "--evidence", str(tmp_path / "ev"),
                    env={"GATE_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr[-2000:]
    [image] = documented(json.loads(done.stdout), "screened_images")["images"]
    assert image["matched"]["character"] == "ultraman" and image["matched"]["strong"]
    assert image["matched"]["region"] == [0, 32, 32, 64]  # the crop that holds it, as the evidence outlines it
    assert "in the outlined part" in (tmp_path / "ev" / "index.html").read_text()


def test_a_close_up_of_a_character_is_found_by_its_references_views(tmp_path):
    from PIL import Image

    # A portrait: the head and shoulders of Totoro's sheet, enlarged. Against his references whole it comes to
    # 0.91 (no match); against their three-quarter views, to 0.99 (probes/views.py).
    sheet = Image.open(REPO / "fixtures" / "world" / "characters" / "totoro" / "ref_00.png").convert("RGB")
    width, height = sheet.size
    sheet.crop((int(width * 0.15), 0, int(width * 0.85), int(height * 0.7))).resize(
        (64, 64), Image.Resampling.BICUBIC).save(tmp_path / "portrait.png")
    done = run_gate("screen-images", str(tmp_path / "portrait.png"), "--json", "--evidence", str(tmp_path / "ev"),
                    env={"GATE_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr[-2000:]
    [image] = documented(json.loads(done.stdout), "screened_images")["images"]
    assert image["matched"]["character"] == "totoro" and image["matched"]["strong"]
    # Shown beside the part of a sheet it resembled: a three-quarter crop at the top, where the head is.
    left, top, right, bottom = image["matched"]["reference_region"]
    assert top == 0 and right - left == bottom - top == round(0.75 * min(width, height)), (left, top, right, bottom)
    assert "like the outlined part of the reference" in (tmp_path / "ev" / "index.html").read_text()
