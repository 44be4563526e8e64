"""The answers' JSON Schemas (docs/reference/schemas/answers.schema.json) are valid, and reject what a hub must
not be sent. Real answers are checked against them where the tests receive them (tests/support.py: checked
deliveries, status reads, and every callback the test hub gets)."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from tests.support import ANSWERS, schema_errors

SET = {"id": "set_1", "kind": "dataset", "state": "decided", "verdict": "quarantine",
       "created_at": "2026-12-07T10:00:00Z",
       "reasons": [{"kind": "image_match", "verdict": "quarantine", "character": "ultraman", "message": "4 of 100",
                    "images": 4, "strong": 0, "needed": 3}],
       "counts": {"images": 100, "matched": 4, "embedded": 100, "refused": 0}, "refused": [],
       "matches": [{"position": 3, "name": "a.png", "sha256": "0" * 64, "character": "ultraman", "score": 0.95,
                    "strong": False, "reference": "r.png", "region": [0, 0, 16, 16], "reference_region": None}]}


def test_the_schemas_are_valid_json_schema():
    Draft202012Validator.check_schema(json.loads(ANSWERS.read_text()))


def test_a_documented_answer_passes_and_departures_are_named():
    assert schema_errors(SET, "image_set") == []
    missing = {k: v for k, v in SET.items() if k != "counts"}
    assert schema_errors(missing, "image_set") == ["(root): 'counts' is a required property"]
    unknown = {**SET, "reasons": [{**SET["reasons"][0], "kind": "vibes"}]}
    assert [e.split(":")[0] for e in schema_errors(unknown, "image_set")] == ["reasons/0/kind"]
    bad_region = {**SET, "matches": [{**SET["matches"][0], "region": [0, 0, 16]}]}
    assert schema_errors(bad_region, "image_set")
    assert schema_errors({"error": {"code": "Not Found", "message": "x"}}, "error_answer")  # codes are snake_case


def test_a_callback_carries_the_answer_of_its_kind():
    callback = {"id": 7, "event": "images.decided", "upload_id": "set_1", "created_at": "2026-12-07", "data": SET}
    assert schema_errors(callback, "callback") == []
    as_upload = {**callback, "event": "upload.decided"}  # an upload's event with a set's answer
    assert schema_errors(as_upload, "callback")
