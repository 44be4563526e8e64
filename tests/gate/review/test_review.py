"""Review logic on a real record: the queue's pages, claims, decisions and their feedback, disputes, the
audit log's chain, through the pages and APIs as moderators and hubs use them."""

from __future__ import annotations

import json
import sqlite3

import pytest

from gate.detection.decisions import Reason, Verdict, _apply_cleared
from gate.record import audit
from gate.record.audit import Actor
from gate.registry import blocklist
from gate.review import feedback
from gate.review import queue as review
from tests.gate.review.conftest import csrf_of

MOD, MOD2, OP = Actor("mod", "moderator"), Actor("mod2", "moderator"), Actor("op", "operator")


def test_keyset_pages_cover_the_queue_once_in_order_both_ways(gate):
    query = review.QueueQuery(sort="oldest")
    seen, cursor = [], None
    while True:
        page = review.queue_page(gate.db, query, after=cursor, size=5)
        seen += [row["id"] for row in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == gate.ids and page.total == len(gate.ids)
    last = review.queue_page(gate.db, query, last=True, size=5)
    assert [row["id"] for row in last.items] == gate.ids[-5:] and last.next_cursor is None
    back = review.queue_page(gate.db, query, before=last.prev_cursor, size=5)
    assert [row["id"] for row in back.items] == gate.ids[-10:-5]
    by_score = review.queue_page(gate.db, review.QueueQuery(sort="score"), size=100).items
    assert [r["review_score"] for r in by_score] == sorted((r["review_score"] for r in by_score), reverse=True)


def test_filters_and_counts(gate):
    hub = review.queue_page(gate.db, review.QueueQuery(hub="hf-test"), size=100)
    assert hub.total == 4 and {r["hub"] for r in hub.items} == {"hf-test"}
    character = hub.items[0]["review_character"]
    assert all(r["review_character"] == character for r in
               review.queue_page(gate.db, review.QueueQuery(character=character), size=100).items)
    assert review.count(gate.db, review.QueueQuery(older_than_hours=24 * 365)) == 0
    assert review.counts(gate.db) == {"quarantined": 12, "disputed": 0, "escalated": 0}


@pytest.mark.parametrize("args,code", [
    ({"status": "everything"}, "filter_invalid"), ({"sort": "random()"}, "filter_invalid"),
    ({"min_score": "nan"}, "filter_invalid"), ({"min_score": "1; drop table uploads"}, "filter_invalid"),
])
def test_hostile_queue_arguments_are_typed_errors(args, code):
    with pytest.raises(review.ReviewError) as caught:
        review.QueueQuery.from_args(args)
    assert caught.value.code == code


@pytest.mark.parametrize("cursor", ["", "!!!", "W10", "WzEsMiwzXQ", "bnVsbA"])
def test_a_forged_cursor_is_a_typed_error_in_the_page(gate, cursor):
    answer = gate.client("mod").get(f"/queue?after={cursor}x")
    assert answer.status_code == 400 and "cursor_invalid" in answer.get_data(as_text=True)


def test_claims_keep_two_moderators_apart_and_expire(gate):
    item = gate.ids[0]
    review.claim(gate.db, MOD, item, 15)
    with pytest.raises(review.ClaimConflict):
        review.claim(gate.db, MOD2, item, 15)
    with pytest.raises(review.ClaimConflict):
        review.decide(gate.db, MOD2, item, "block", "looks like it")
    gate.db.execute("update uploads set claimed_until = '2000-01-01T00:00:00.000+00:00' where id = ?", [item])
    review.claim(gate.db, MOD2, item, 15)  # the lapsed claim no longer holds
    assert [e["action"] for e in audit.entries(gate.db, "upload", item)] == ["claim", "claim"]


def test_block_feeds_the_blocklist_and_tells_the_hub_in_one_transaction(gate):
    item = gate.ids[1]
    upload = review.decide(gate.db, MOD, item, "block", "draws the character in every render")
    assert upload["verdict"] == "block" and upload["review_status"] is None
    assert blocklist.contains(gate.db, upload["tensor_hash"])["source"] == "review:mod"
    message = gate.db.execute("select event, payload from outbox where upload_id = ?", [item]).fetchone()
    assert message[0] == "upload.reviewed"
    assert json.loads(message[1])["review"] == {"action": "block", "reason": "draws the character in every render",
                                                "at": upload["reviewed_at"]}
    entries = audit.entries(gate.db, "upload", item)
    assert entries[-1]["action"] == "decision.block" and entries[-1]["actor"] == "mod"
    assert json.loads(entries[-1]["before"])["verdict"] == "quarantine"
    assert json.loads(entries[-1]["after"])["verdict"] == "block"
    events = gate.db.execute("select actor, action from upload_events where upload_id = ?", [item]).fetchall()
    assert events == [("mod", "review block")]


def test_a_failed_feedback_rolls_the_whole_decision_back(gate):
    item = gate.ids[2]
    gate.db.execute("update uploads set tensor_hash = 'not-a-hash' where id = ?", [item])
    with pytest.raises(Exception):  # noqa: B017 - the blocklist refuses the hash; the decision must not stand
        review.decide(gate.db, MOD, item, "block", "a reason")
    upload = gate.db["uploads"].get(item)
    assert upload["verdict"] == "quarantine" and upload["review_status"] == "quarantined"
    assert not audit.entries(gate.db, "upload", item)
    assert gate.db["outbox"].count_where("upload_id = ?", [item]) == 0


def test_allow_remembers_the_false_positive_for_the_scan(gate):
    item = gate.ids[3]
    upload = review.decide(gate.db, MOD, item, "allow", "a generic robot, not the character")
    cleared = feedback.cleared_characters(gate.db, upload["tensor_hash"])
    flagged = {r["character"] or "*" for r in json.loads(upload["reasons"]) if r["verdict"] == "quarantine"}
    assert cleared == flagged and cleared
    # The scan's decision with the same evidence: the cleared character's quarantine becomes allow.
    character = sorted(cleared)[0]
    reasons = [Reason("visual_match", Verdict.QUARANTINE, "possible match", character),
               Reason("visual_match", Verdict.QUARANTINE, "possible match", "someone_else"),
               Reason("visual_match", Verdict.BLOCK, "clear match", character)]
    _apply_cleared(reasons, cleared)
    assert [r.verdict for r in reasons] == [Verdict.ALLOW, Verdict.QUARANTINE, Verdict.BLOCK]


def test_escalated_items_are_for_operators(gate):
    item = gate.ids[4]
    review.decide(gate.db, MOD, item, "escalate", "unsure: fan art style")
    from gate.review.accounts import Forbidden

    with pytest.raises(Forbidden):
        review.decide(gate.db, MOD, item, "allow", "fine")
    assert review.counts(gate.db) == {"quarantined": 11, "disputed": 0, "escalated": 1}
    assert review.decide(gate.db, OP, item, "allow", "original character")["verdict"] == "allow"
    assert review.counts(gate.db) == {"quarantined": 11, "disputed": 0, "escalated": 0}


@pytest.mark.parametrize("reason", ["", "   ", "x" * 2001])
def test_a_decision_needs_a_reason(gate, reason):
    with pytest.raises(review.ReviewError):
        review.decide(gate.db, MOD, gate.ids[5], "block", reason)


def test_a_hub_disputes_a_block_and_hears_the_outcome(gate):
    item = gate.item_for_hub()
    review.decide(gate.db, MOD, item, "block", "matches the character")
    hub = gate.client()
    headers = {"Authorization": f"Bearer {gate.tokens['hub']}"}
    answer = hub.post(f"/v1/uploads/{item}/dispute", json={"statement": "I drew this robot myself."},
                      headers=headers)
    assert answer.status_code == 202, answer.get_json()
    deadline = answer.get_json()["dispute"]["deadline"]
    again = hub.post(f"/v1/uploads/{item}/dispute", json={"statement": "again"}, headers=headers)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "dispute_exists"
    row = gate.db["uploads"].get(item)
    assert row["review_status"] == "disputed" and row["dispute_deadline"] == deadline
    assert row["review_character"]  # the trigger filled the queue's fields
    page = gate.client("mod").get("/queue?status=disputed").get_data(as_text=True)
    assert item in page and deadline[:16].replace("T", " ") in page
    review.decide(gate.db, MOD2, item, "allow", "the statement and the renders agree: an original robot")
    assert not blocklist.contains(gate.db, row["tensor_hash"])
    events = [(e, json.loads(p)) for e, p in gate.db.execute(
        "select event, payload from outbox where upload_id = ? order by id", [item]).fetchall()]
    assert [e for e, _ in events] == ["upload.reviewed", "dispute.received", "dispute.resolved"]
    assert events[-1][1]["dispute"]["outcome"] == "reinstated" and events[-1][1]["verdict"] == "allow"


@pytest.mark.parametrize("body,status,code", [
    ({}, 400, "statement_missing"), ({"statement": 5}, 400, "statement_missing"),
    ({"statement": "x" * 10_001}, 400, "statement_too_long"), ("[1]", 400, "body_invalid"),
])
def test_hostile_disputes_get_typed_errors(gate, body, status, code):
    item = gate.item_for_hub()
    headers = {"Authorization": f"Bearer {gate.tokens['hub']}"}
    client = gate.client()
    answer = (client.post(f"/v1/uploads/{item}/dispute", data=body, content_type="application/json", headers=headers)
              if isinstance(body, str) else client.post(f"/v1/uploads/{item}/dispute", json=body, headers=headers))
    assert answer.status_code == status and answer.get_json()["error"]["code"] == code


def test_a_hub_cannot_dispute_another_hubs_upload(gate):
    other = gate.item_for_hub("hf-test")
    answer = gate.client().post(f"/v1/uploads/{other}/dispute", json={"statement": "mine"},
                                headers={"Authorization": f"Bearer {gate.tokens['hub']}"})
    assert answer.status_code == 404


def test_the_audit_chain_detects_tampering(gate):
    review.decide(gate.db, MOD, gate.ids[6], "block", "first")
    review.decide(gate.db, MOD, gate.ids[7], "allow", "second")
    assert audit.verify(gate.db).ok
    with pytest.raises(sqlite3.IntegrityError):
        gate.db.execute("update audit_log set reason = 'nothing to see' where id = 1")
    with pytest.raises(sqlite3.IntegrityError):
        gate.db.execute("delete from audit_log where id = 1")
    gate.db.execute("drop trigger audit_log_no_update")  # someone with the file and sqlite3 in hand
    gate.db.execute("update audit_log set reason = 'nothing to see' where id = 2")
    result = audit.verify(gate.db)
    assert not result.ok and result.first_bad == 2


def test_every_message_to_a_hub_carries_the_audit_head(gate):
    review.decide(gate.db, MOD, gate.ids[6], "block", "an anchor for the hub")
    message = gate.db.execute("select payload from outbox where upload_id = ? order by id desc limit 1",
                              [gate.ids[6]]).fetchone()[0]
    latest = audit.entries(gate.db, newest_first=True, limit=1)[0]
    assert json.loads(message)["audit_head"] == {"id": latest["id"], "sha256": latest["hash"]}
    assert latest["action"] == "decision.block" and latest["subject_id"] == gate.ids[6]  # the decision itself
    assert audit.verify(gate.db, [(latest["id"], latest["hash"])]).ok
    assert not audit.verify(gate.db, [(latest["id"], "0" * 64)]).ok


def test_bulk_decisions_confirm_exactly_what_was_shown(gate):
    client = gate.client("mod")
    review.claim(gate.db, MOD2, gate.item_for_hub("tensorart-test"), 15)
    form = {"csrf": csrf_of(client), "status": "quarantined", "hub": "tensorart-test", "action": "block",
            "reason": "a batch of re-uploads"}
    confirm = client.post("/queue/bulk", data=form)
    assert confirm.status_code == 200
    ids = [i for i in gate.ids if gate.db["uploads"].get(i)["hub"] == "tensorart-test"]
    page = confirm.get_data(as_text=True)
    assert all(f'name="id" value="{i}"' in page for i in ids)
    done = client.post("/queue/bulk/confirm", data={"csrf": csrf_of(client), "action": "block",
                                                    "reason": "a batch of re-uploads", "id": ids})
    assert done.status_code == 302
    verdicts = {i: gate.db["uploads"].get(i)["verdict"] for i in ids}
    assert sorted(verdicts.values()) == ["block"] * (len(ids) - 1) + ["quarantine"]  # mod2's claim is respected
    assert len([e for e in audit.entries(gate.db) if e["action"] == "decision.block"]) == len(ids) - 1


def test_forms_without_the_csrf_token_are_refused(gate):
    client = gate.client("mod")
    answer = client.post(f"/queue/{gate.ids[8]}/decide", data={"action": "block", "reason": "x"})
    assert answer.status_code == 403 and "csrf_failed" in answer.get_data(as_text=True)
    assert gate.db["uploads"].get(gate.ids[8])["verdict"] == "quarantine"


def test_login_failures_and_disabled_accounts(gate):
    from gate.review.accounts import set_disabled

    client = gate.app.test_client()
    page = client.get("/login").get_data(as_text=True)
    import re

    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    wrong = client.post("/login", data={"username": "mod", "password": "nope", "csrf": token})
    assert wrong.status_code == 401 and "login_failed" in wrong.get_data(as_text=True)
    signed_in = gate.client("mod")
    assert signed_in.get("/queue").status_code == 200
    set_disabled(gate.db, Actor("adm", "admin"), "mod", True, "left")
    assert signed_in.get("/queue").status_code == 302  # the live session ended with the account
    assert gate.client().post(f"/v1/uploads/{gate.ids[0]}/dispute", json={"statement": "x"},
                              headers={"Authorization": "Bearer gt_forged"}).status_code == 401


def test_the_login_redirect_stays_on_this_site(gate):
    client = gate.app.test_client()
    assert client.get("/queue?sort=score").headers["Location"].startswith("/login?next=")
    from tests.gate.review.conftest import login

    client = gate.app.test_client()
    page = client.get("/login?next=//evil.example/x").get_data(as_text=True)
    import re

    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    answer = client.post("/login?next=//evil.example/x", data={"username": "mod", "password":
                                                                "correct horse battery", "csrf": token})
    assert answer.headers["Location"] == "/queue"
    assert login  # the shared helper is what other tests use


def test_rights_holders_manage_only_their_own_characters(gate, tmp_path):
    client = gate.client()
    headers = {"Authorization": f"Bearer {gate.tokens['rights_holder']}"}
    mine = client.get("/v1/characters", headers=headers).get_json()["characters"]
    assert mine and {c["rights_holder"] for c in mine} == {gate.rights_holder}
    other = gate.db.execute("select id from characters where rights_holder != ? limit 1",
                            [gate.rights_holder]).fetchone()[0]
    assert client.get(f"/v1/characters/{other}", headers=headers).status_code == 404
    assert client.patch(f"/v1/characters/{other}", json={"policy": "block"}, headers=headers).status_code == 404
    policy = {"block": "quarantine", "quarantine": "block"}[gate.db["characters"].get(gate.own_character)["policy"]]
    changed = client.patch(f"/v1/characters/{gate.own_character}", json={"policy": policy, "aliases": ["Alt"]},
                           headers=headers)
    assert changed.status_code == 200 and changed.get_json()["policy"] == policy
    assert audit.entries(gate.db, "character", gate.own_character)[-1]["action"] == "policy.change"
    reference = sorted((gate.data_dir / "references").rglob("*.png"))[0]
    created = client.post("/v1/characters", headers=headers, data={
        "name": "Brand New Hero", "policy": "quarantine", "aliases": "BNH, Hero",
        "reference": [(reference.open("rb"), "ref.png")]}, content_type="multipart/form-data")
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["rights_holder"] == gate.rights_holder
    bad = client.post("/v1/characters", headers=headers, data={
        "name": "Broken", "reference": [(__import__("io").BytesIO(b"not an image"), "x.png")]},
        content_type="multipart/form-data")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "image_format"  # the registry's check
    retired = client.delete(f"/v1/characters/{created.get_json()['id']}", headers=headers)
    assert retired.get_json()["status"] == "retired"
    matches = client.get(f"/v1/characters/{gate.own_character}/matches", headers=headers)
    assert matches.status_code == 200


def test_a_scan_that_ends_in_quarantine_enters_the_queue(gate, scanned):
    """Whatever decides an upload (the jobs, the reconciler) goes through uploads.transition: the record's
    trigger puts a quarantine in the queue with its strongest match's character, rights holder and score."""
    from pathlib import Path

    from gate.record.uploads import UploadState, record_upload, transition

    scan = scanned[0][0]
    upload = record_upload(gate.db, "direct", {"hub": "civitai-test", "uploader": "newcomer"}, Path("/nonexistent"),
                           scan["file_sha256"], scan["file_size"], scan["filename"]).upload
    before = review.counts(gate.db)["quarantined"]
    transition(gate.db, upload["id"], UploadState.DECIDED, "gate", "decided quarantine",
               {"verdict": "quarantine", "reasons": json.dumps(scan["reasons"]), "matches": json.dumps(scan["matches"]),
                "tensor_hash": scan["tensor_hash"]})
    row = gate.db["uploads"].get(upload["id"])
    top = max(scan["matches"], key=lambda m: m["best_score"])
    assert row["review_status"] == "quarantined" and row["review_character"] == top["character"]
    assert row["review_score"] == top["best_score"]
    assert row["review_rights_holder"] == gate.db["characters"].get(top["character"])["rights_holder"]
    assert review.counts(gate.db)["quarantined"] == before + 1


@pytest.mark.parametrize("path", ["/queue/../evidence/x.png", "/queue/..%2f..%2fgate.db/evidence/00_render.png",
                                  "/queue/{item}/evidence/evidence.json", "/queue/{item}/evidence/..%2f..%2fgate.db"])
def test_evidence_paths_stay_inside_the_items_folder(gate, path):
    answer = gate.client("mod").get(path.format(item=gate.ids[0]))
    assert answer.status_code == 404


def test_pages_name_characters_not_ids_and_tell_each_name_hit_once(gate):
    import html

    moderator = gate.client("mod")
    names = {row[0]: row[1] for row in gate.db.execute("select id, name from characters")}
    listed = [row[0] for row in gate.db.execute(
        "select distinct review_character from uploads where review_status = 'quarantined' and review_character "
        "is not null")]
    page = moderator.get("/queue").get_data(as_text=True)
    assert listed
    for character in listed:
        assert names[character] != character  # the world's ids and names differ ("ultraman", "Ultraman")
        assert f"<td>{html.escape(names[character])}</td>" in page and f"<td>{character}</td>" not in page
    item = moderator.get(f"/queue/{gate.item_for_hub()}").get_data(as_text=True)
    hits = item.split("<th>metadata hits</th>", 1)[1].split("</tr>", 1)[0]
    assert "match with" not in hits  # the name hits themselves, not the reasons' sentences again
    told = [line for line in hits.split("<br>") if ":" in line]
    assert told and len(told) == len(set(told))


def test_the_item_page_shows_the_likelihood_probe_against_its_thresholds(gate):
    item = gate.client("mod").get(f"/queue/{gate.item_for_hub()}").get_data(as_text=True)
    card = item.split('id="likelihood"', 1)[1].split("</div>", 1)[0]
    assert "quarantines" in card and "policy applies" in card, card[:600]
    rows = card.split("<tr>")[2:]
    assert rows and all(any(band in row for band in ("below the quarantine", "between quarantine and block",
                                                      "over the block", "screened")) for row in rows)
    assert "%" in rows[0]  # the gain, as a percentage


def test_each_render_says_whether_it_counted_and_why(gate):
    """Every evidence row is marked counted or not, with the reason, under the thresholds the page states."""
    item = gate.client("mod").get(f"/queue/{gate.item_for_hub()}").get_data(as_text=True)
    assert "A render counts towards a character when" in item
    rows = item.split('<table class="evidence">', 1)[1].split("</table>", 1)[0].split("<tr>")[2:]
    assert rows
    for row in rows:
        assert ("counted: a match for" in row) or ("not counted" in row), row[-400:]


def test_the_item_page_shows_what_the_lora_draws(gate):
    """A strip of the renders the LoRA changed most against its base, whatever they match, each served."""
    moderator = gate.client("mod")
    upload_id = gate.item_for_hub()
    item = moderator.get(f"/queue/{upload_id}").get_data(as_text=True)
    strip = item.split('id="drawn"', 1)[1].split("</div>", 1)[0]
    images = [part.split('"', 1)[0] for part in strip.split('src="')[1:]]
    assert len(images) == 6
    for image in images:
        answer = moderator.get(image)
        assert answer.status_code == 200 and answer.mimetype == "image/png"


def test_the_item_page_shows_the_hubs_previews_and_what_they_show(gate, tmp_path):
    """Previews stored with the upload are served to moderators, each marked with the character a preview_match
    reason saw in it; a refused one is listed with its code."""
    from gate.images.previews import store_previews
    from tests.conftest import REPO

    upload_id = gate.item_for_hub()
    drawing = REPO / "fixtures" / "world" / "images" / "held_back" / "ultraman_00.png"
    rows = store_previews([("hero.png", drawing.read_bytes()), ("junk.png", b"not an image")],
                          gate.data_dir / "previews")
    gate.db["upload_previews"].insert_all([{**row, "upload_id": upload_id} for row in rows])
    reasons = json.loads(gate.db["uploads"].get(upload_id)["reasons"]) + [
        {"kind": "preview_match", "verdict": "quarantine", "character": "ultraman",
         "message": "preview images: 1 of 1 images show Ultraman", "previews": ["hero.png"]}]
    gate.db["uploads"].update(upload_id, {"reasons": json.dumps(reasons)})
    moderator = gate.client("mod")
    page = moderator.get(f"/queue/{upload_id}").get_data(as_text=True)
    card = page.split('id="previews"', 1)[1].split("</div>", 1)[0]
    assert "hero.png<br><b class=\"block\">shows Ultraman</b>" in card and "junk.png: refused (image_format)" in card
    image = moderator.get(f"/queue/{upload_id}/preview/0")
    assert image.status_code == 200 and image.mimetype == "image/png" and image.data == drawing.read_bytes()
    assert moderator.get(f"/queue/{upload_id}/preview/1").status_code == 404  # refused: never stored
    assert gate.client().get(f"/queue/{upload_id}/preview/0").status_code in (302, 401, 403)  # signed in only


def test_rights_holders_see_image_sets_that_matched_their_characters(gate):
    """Sets screened image by image: a rights holder sees those with images of their own characters (how many,
    the best score) on their page and in the API, and nobody else's."""
    mine = gate.own_character
    other = gate.db.execute("select id from characters where rights_holder != ? limit 1",
                            [gate.rights_holder]).fetchone()[0]
    for set_id, character in (("is_mine000000000", mine), ("is_other00000000", other)):
        gate.db["image_sets"].insert({"id": set_id, "kind": "dataset", "delivery_key": set_id, "hub": "civitai-test",
                                      "title": f"set {set_id}", "state": "decided", "verdict": "quarantine",
                                      "images": 40, "created_at": "2026-12-06T10:00:00.000+00:00"})
        gate.db["set_images"].insert_all([{"set_id": set_id, "position": n, "name": f"{n}.png", "sha256": f"{n}",
                                           "character_id": character, "score": 0.9 + n / 100, "strong": 0}
                                          for n in range(3)])
    headers = {"Authorization": f"Bearer {gate.tokens['rights_holder']}"}
    found = gate.client().get(f"/v1/characters/{mine}/matches", headers=headers).get_json()["image_matches"]
    assert [(m["id"], m["images"], m["total"], m["best_score"]) for m in found] == [("is_mine000000000", 3, 40, 0.92)]
    page = gate.client("rh").get("/rights").get_data(as_text=True)
    table = page.split('id="image-matches"', 1)[1].split("</table>", 1)[0]
    assert "set is_mine000000000" in table and "3 of 40" in table and "is_other" not in table


def test_moderators_decide_a_quarantined_image_set_with_a_reason(gate):
    """The list of quarantined sets, one set's page with its matching images, and a block with a reason: the
    verdict changes, the audit log and the hub hear of it, and the set leaves the list."""
    from gate.images.record import record_set

    row, _ = record_set(gate.db, "dataset", {"hub": "civitai-test", "title": "hero training set"},
                        gate.data_dir / "x.zip", "ab" * 32, 10, "set.zip")
    gate.db["image_sets"].update(row["id"], {
        "state": "decided", "verdict": "quarantine", "review_status": "quarantined", "images": 40, "matched": 5,
        "reasons": json.dumps([{"kind": "image_match", "verdict": "quarantine", "character": gate.own_character,
                                "message": "5 of 40 images show it"}])})
    gate.db["set_images"].insert({"set_id": row["id"], "position": 3, "name": "hero_03.png", "sha256": "cd" * 32,
                                  "character_id": gate.own_character, "score": 0.93, "strong": 0})
    moderator = gate.client("mod")
    listing = moderator.get("/images").get_data(as_text=True)
    assert "hero training set" in listing and "5 of 40 match" in listing
    page = moderator.get(f"/images/{row['id']}").get_data(as_text=True)
    assert "hero_03.png" in page and "5 of 40 images show it" in page and 'id="decision"' in page
    token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    missing = moderator.post(f"/images/{row['id']}/decide", data={"action": "block", "reason": " ", "csrf": token})
    assert missing.status_code == 400 and gate.db["image_sets"].get(row["id"])["verdict"] == "quarantine"
    done = moderator.post(f"/images/{row['id']}/decide",
                          data={"action": "block", "reason": "a whole set of one registered character", "csrf": token})
    assert done.status_code == 302
    after = gate.db["image_sets"].get(row["id"])
    assert (after["verdict"], after["review_status"], after["reviewed_by"]) == ("block", None, "mod")
    [entry] = audit.entries(gate.db, "image_set", row["id"])
    assert entry["action"] == "decision.block" and entry["reason"] == "a whole set of one registered character"
    message = gate.db.execute("select event, payload from outbox where upload_id = ?", [row["id"]]).fetchone()
    assert message[0] == "images.decided" and json.loads(message[1])["review"]["action"] == "block"
    assert "hero training set" not in moderator.get("/images").get_data(as_text=True)
    assert gate.client("rh").get("/images").status_code == 403


def test_a_variants_gain_falls_in_the_band_the_decision_judged_it_by():
    """A part's or another strength's gain is placed against the variants' thresholds, as the decision judged
    it; the whole's as published against the whole's."""
    limits = {"render_score": 0.8, "lift": 0.0, "quarantine_matches": 2, "block_matches": 3, "block_score": 0.9,
              "likelihood_quarantine": 0.07, "likelihood_block": 0.12,
              "likelihood_variant_quarantine": 0.09, "likelihood_variant_block": 0.14}

    def gain(value, **how):
        return {"character_id": "a", "gain": value, "prompt": "a character", "reference_gains": [value],
                "screened": False, "whole_gain": 0.0, **how}

    bands = [row["band"] for row in review._likelihood({"thresholds": limits, "likelihood": [
        gain(0.08, strength=2.0), gain(0.13, part="part 1 of 2"), gain(0.15, strength=0.5),
        {**gain(0.08), "whole_gain": None}]})]
    assert bands == ["below the quarantine threshold", "between quarantine and block", "over the block threshold",
                     "between quarantine and block"]
