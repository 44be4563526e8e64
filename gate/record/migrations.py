"""The record's schema: migrations (sqlite-utils), numbered in the order they apply.

Records made before 2026-12-06 know them by older names (numbered by the issue that added them); `RENAMED`
maps those to these, and `rename_applied` renames a record's applied migrations before the pending ones are
applied, so an old record is never migrated twice.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("gate")

RENAMED = {
    "m251_weightprints": "m005_weightprints",
    "m201_catalogue": "m006_catalogue",
    "m202_rescans": "m007_rescans",
    "m203_screening_items": "m008_screening_items",
    "m301_deliveries": "m009_deliveries",
    "m302_hub_actions": "m010_hub_actions",
    "m101_accounts": "m011_accounts",
    "m102_audit_log": "m012_audit_log",
    "m103_review_queue": "m013_review_queue",
    "m104_review_counts": "m014_review_counts",
    "m105_review_score_indexes": "m015_review_score_indexes",
    "m106_login_failures": "m016_login_failures",
    "m107_screening_likelihood": "m017_screening_likelihood",
}


def rename_applied(db: Database) -> None:
    """Give a record's applied migrations their current names (a no-op on a new or current record)."""
    table = Migrations.migrations_table
    if not db[table].exists():
        return
    for old, new in RENAMED.items():
        db.execute(f"update {table} set name = ? where migration_set = ? and name = ?", [new, migrations.name, old])


@migrations()
def m001_registry(db: Database) -> None:
    db["characters"].create(
        {"id": str, "name": str, "aliases": str, "rights_holder": str, "policy": str, "status": str,
         "description": str, "created_at": str, "updated_at": str},
        pk="id",
    )
    db["character_references"].create(
        {"id": int, "character_id": str, "path": str, "sha256": str, "width": int, "height": int,
         "created_at": str},
        pk="id", foreign_keys=[("character_id", "characters", "id")],
    )
    db["character_references"].create_index(["character_id", "sha256"], unique=True)
    # Embeddings depend on the embedder, so they are keyed by it and recomputed when it changes.
    db["reference_embeddings"].create(
        {"reference_id": int, "embedder": str, "vector": bytes},
        pk=("reference_id", "embedder"), foreign_keys=[("reference_id", "character_references", "id")],
    )
    db["blocklist"].create({"tensor_hash": str, "reason": str, "source": str, "created_at": str},
                           pk="tensor_hash")


@migrations()
def m002_uploads(db: Database) -> None:
    db["uploads"].create(
        {"id": str, "source": str, "delivery_key": str, "hub": str, "model_id": str, "version_id": str,
         "uploader": str, "title": str, "tags": str, "description": str, "trigger_words": str, "filename": str,
         "file_path": str, "file_sha256": str, "file_size": int, "tensor_hash": str, "state": str, "verdict": str,
         "reasons": str, "matches": str, "probe_set": str, "error_code": str, "error_message": str,
         "attempts": int, "created_at": str, "updated_at": str, "decided_at": str},
        pk="id", defaults={"attempts": 0},
    )
    # Hubs retry: the same delivery (same hub record and the same bytes) must be one upload.
    db["uploads"].create_index(["delivery_key"], unique=True)
    db["uploads"].create_index(["state"])
    # Append-only journal of every state change: who, when, what, why, before and after.
    db["upload_events"].create(
        {"id": int, "upload_id": str, "at": str, "actor": str, "action": str, "from_state": str, "to_state": str,
         "detail": str},
        pk="id", foreign_keys=[("upload_id", "uploads", "id")],
    )
    db["upload_events"].create_index(["upload_id"])


@migrations()
def m003_outbox(db: Database) -> None:
    # Messages to hubs (decisions, dispute outcomes), written in the same transaction as the change they report
    # and delivered later with retries, so a hub that is down never loses a decision.
    db["outbox"].create(
        {"id": int, "upload_id": str, "event": str, "payload": str, "state": str, "attempts": int,
         "next_attempt_at": str, "last_error": str, "created_at": str, "delivered_at": str},
        pk="id", defaults={"attempts": 0, "state": "pending"},
    )
    db["outbox"].create_index(["state", "next_attempt_at"])


@migrations()
def m004_scan_generation(db: Database) -> None:
    # Which run of an upload's scan pipeline is live: a run lost to a killed worker or a Redis restart is
    # replaced by the next generation, and jobs of older generations do nothing.
    db["uploads"].add_column("generation", int, not_null_default=0)
    # Seconds the probe worker spent rendering and embedding this upload (the GPU's cost of a LoRA).
    db["uploads"].add_column("probe_seconds", float)


@migrations()
def m005_weightprints(db: Database) -> None:
    # Every scanned LoRA's weight-space fingerprint (gate/weightprint.py), keyed by its tensor hash: near-
    # duplicates of blocked or quarantined uploads are found by it. Sketches are float16, scaled by `scale`.
    db["weightprints"].create(
        {"tensor_hash": str, "file_sha256": str, "version": str, "modules": str, "scale": float,
         "sketches": bytes, "vector": bytes, "skipped": int, "created_at": str},
        pk="tensor_hash",
    )
    # Finding the uploads a fingerprint belongs to, and an uploader's history.
    db["uploads"].create_index(["tensor_hash"], index_name="idx_uploads_repeat_tensor_hash", if_not_exists=True)
    db["uploads"].create_index(["hub", "uploader"], index_name="idx_uploads_repeat_uploader", if_not_exists=True)


@migrations()
def m006_catalogue(db: Database) -> None:
    # Every concluded scan's probe embeddings, so a newly registered character can be screened against the whole
    # catalogue without rendering: per render the LoRA's vector and the base vector of the same probe (float16,
    # row-major bytes), the probes (prompt, seed), the probe set and embedder they came from. One row per upload;
    # a rescan replaces it (a new id, so a resident index sees the change).
    db["catalogue_scans"].create(
        {"id": int, "upload_id": str, "probe_set": str, "embedder": str, "base_family": str, "renders": int,
         "dim": int, "lora_vectors": bytes, "base_vectors": bytes, "probes": str, "created_at": str},
        pk="id", foreign_keys=[("upload_id", "uploads", "id")],
    )
    db["catalogue_scans"].create_index(["upload_id"], unique=True)
    db["catalogue_scans"].create_index(["embedder", "id"])
    # A character screened against the stored embeddings: the run, and each upload that showed the character.
    db["screenings"].create(
        {"id": int, "character_id": str, "cause": str, "embedder": str, "thresholds": str, "screened": int,
         "renders": int, "candidates": int, "hits": int, "changed": int, "seconds": float, "created_at": str},
        pk="id", foreign_keys=[("character_id", "characters", "id")],
    )
    db["screenings"].create_index(["character_id"])
    db["screening_hits"].create(
        {"id": int, "screening_id": int, "upload_id": str, "verdict_before": str, "verdict_after": str,
         "changed": int, "certainty": str, "matched": int, "rendered": int, "best_score": float, "best_lift": float,
         "renders": str},
        pk="id", foreign_keys=[("screening_id", "screenings", "id"), ("upload_id", "uploads", "id")],
    )
    db["screening_hits"].create_index(["screening_id"])


@migrations()
def m007_rescans(db: Database) -> None:
    # A rescan run and its per-upload progress, so an interrupted run resumes without redoing finished uploads.
    db["rescan_runs"].create(
        {"id": str, "filters": str, "probe_set": str, "rate_per_min": float, "state": str, "total": int,
         "created_at": str, "finished_at": str},
        pk="id",
    )
    db["rescan_items"].create(
        {"run_id": str, "upload_id": str, "position": int, "state": str, "verdict_before": str,
         "verdict_after": str, "probe_set_before": str, "probe_set_after": str, "error": str, "finished_at": str},
        pk=("run_id", "upload_id"),
        foreign_keys=[("run_id", "rescan_runs", "id"), ("upload_id", "uploads", "id")],
    )
    db["rescan_items"].create_index(["run_id", "state"])


@migrations()
def m008_screening_items(db: Database) -> None:
    # A likelihood screening's uploads, each pending until judged: `done` counts each once however often its job
    # runs, and a run whose jobs were lost (a worker killed, Redis restarted) resumes with only what is left.
    db["screening_items"].create(
        {"screening_id": int, "upload_id": str, "state": str, "finished_at": str},
        pk=("screening_id", "upload_id"), not_null={"state"},
        foreign_keys=[("screening_id", "screenings", "id"), ("upload_id", "uploads", "id")],
    )
    db["screening_items"].create_index(["screening_id", "state"])


@migrations()
def m009_deliveries(db: Database) -> None:
    # Deliveries that name weights elsewhere (a Hugging Face webhook, a URL upload): recorded before they are
    # answered, then fetched on the intake queue; each becomes zero or more uploads.
    db["deliveries"].create(
        {"id": str, "kind": str, "delivery_key": str, "payload": str, "repo_id": str, "revision": str, "url": str,
         "meta": str, "state": str, "reason": str, "upload_ids": str, "error_code": str, "error_message": str,
         "attempts": int, "generation": int, "created_at": str, "updated_at": str},
        pk="id", defaults={"attempts": 0, "generation": 0, "upload_ids": "[]"},
    )
    db["deliveries"].create_index(["delivery_key"], unique=True)
    db["deliveries"].create_index(["state"])


@migrations()
def m010_hub_actions(db: Database) -> None:
    # What the gate did (or tried to do) to a hub after a block: one row per action, retried until done.
    db["hub_actions"].create(
        {"id": int, "upload_id": str, "hub": str, "repo_id": str, "action": str, "state": str, "attempts": int,
         "next_attempt_at": str, "last_error": str, "result": str, "created_at": str, "done_at": str},
        pk="id", defaults={"attempts": 0, "state": "pending"},
    )
    db["hub_actions"].create_index(["upload_id", "action"], unique=True)
    db["hub_actions"].create_index(["state", "next_attempt_at"])


@migrations()
def m011_accounts(db: Database) -> None:
    # People (sessions) and machines (hub tokens). `party` is the rights holder a rights_holder account speaks
    # for, or the hub a hub account speaks for. `session_epoch` ended sessions until m019 kept them in the
    # record; it is unread since.
    db["accounts"].create(
        {"id": int, "username": str, "role": str, "password_hash": str, "party": str, "disabled": int,
         "session_epoch": int, "created_at": str, "updated_at": str},
        pk="id", defaults={"disabled": 0, "session_epoch": 0}, not_null={"username", "role"},
    )
    db["accounts"].create_index(["username"], unique=True)
    # API tokens are stored as the sha256 of a random token: the token itself is shown once and never kept.
    db["api_tokens"].create(
        {"id": int, "account_id": int, "name": str, "token_sha256": str, "created_at": str, "revoked_at": str,
         "last_used_at": str},
        pk="id", foreign_keys=[("account_id", "accounts", "id")],
    )
    db["api_tokens"].create_index(["token_sha256"], unique=True)


@migrations()
def m012_audit_log(db: Database) -> None:
    # Append-only and hash-chained: every row carries the sha256 of its content and of the row before it, and
    # triggers refuse UPDATE and DELETE, so an edit needs the triggers dropped and still breaks the chain.
    db["audit_log"].create(
        {"id": int, "at": str, "actor": str, "actor_role": str, "action": str, "subject_type": str,
         "subject_id": str, "reason": str, "before": str, "after": str, "prev_hash": str, "hash": str},
        pk="id",
    )
    db["audit_log"].create_index(["subject_type", "subject_id"])
    db.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
               "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")
    db.execute("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
               "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")


@migrations()
def m013_review_queue(db: Database) -> None:
    # The queue is a view of uploads: review_status says whether a person must look (quarantined, disputed,
    # escalated) and the denormalised columns make every sort and filter an index range, at 100k items.
    uploads = db["uploads"]
    for name, kind in (("review_status", str), ("review_score", float), ("review_character", str),
                       ("review_rights_holder", str), ("claimed_by", str), ("claimed_until", str),
                       ("dispute_statement", str), ("disputed_at", str), ("dispute_deadline", str),
                       ("reviewed_by", str), ("reviewed_at", str)):
        uploads.add_column(name, kind)
    for columns in (["review_status", "created_at", "id"], ["review_status", "review_score", "id"],
                    ["review_status", "review_character", "created_at", "id"],
                    ["review_status", "review_rights_holder", "created_at", "id"],
                    ["review_status", "hub", "created_at", "id"], ["review_status", "uploader", "created_at", "id"],
                    ["uploader", "created_at"], ["tensor_hash"]):
        uploads.create_index(columns, index_name="uploads_" + "_".join(columns))
    # Entering the queue (and its sort fields) is code: gate.record.uploads.update_upload.
    # Allowed false positives, remembered by tensor hash and character ('*' for reasons without one), so the
    # same evidence does not quarantine the same weights again.
    db["cleared"].create({"tensor_hash": str, "character_id": str, "upload_id": str, "cleared_by": str,
                          "reason": str, "created_at": str}, pk=("tensor_hash", "character_id"))


@migrations()
def m014_review_counts(db: Database) -> None:
    # The queue's tab counts, kept by triggers: counting 100,000 index entries on every page view cost more
    # than the rest of the page.
    db["review_counts"].create({"status": str, "n": int}, pk="status")
    db.execute("INSERT INTO review_counts (status, n) SELECT review_status, count(*) FROM uploads "
               "WHERE review_status IS NOT NULL GROUP BY review_status")
    db.executescript("""
        CREATE TRIGGER review_counts_insert AFTER INSERT ON uploads WHEN NEW.review_status IS NOT NULL
        BEGIN
          INSERT INTO review_counts (status, n) VALUES (NEW.review_status, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER review_counts_update AFTER UPDATE OF review_status ON uploads
        WHEN OLD.review_status IS NOT NEW.review_status
        BEGIN
          UPDATE review_counts SET n = n - 1 WHERE status = OLD.review_status;
          INSERT INTO review_counts (status, n) SELECT NEW.review_status, 1 WHERE NEW.review_status IS NOT NULL
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER review_counts_delete AFTER DELETE ON uploads WHEN OLD.review_status IS NOT NULL
        BEGIN
          UPDATE review_counts SET n = n - 1 WHERE status = OLD.review_status;
        END;
    """)


@migrations()
def m015_review_score_indexes(db: Database) -> None:
    # Sorting a filtered queue by score needs the filter column before the score in the index, or SQLite sorts
    # (or scans) every matching row: 400 ms for one character's 10,000 items.
    for column in ("review_character", "review_rights_holder", "hub", "uploader"):
        db["uploads"].create_index(["review_status", column, "review_score", "id"],
                                   index_name=f"uploads_review_status_{column}_review_score_id")


@migrations()
def m016_login_failures(db: Database) -> None:
    # Failed sign-ins per key ("account|address" and "address"), in fixed windows: the throttle's memory,
    # shared by every web process.
    db["login_failures"].create({"key": str, "failures": int, "window_start": float}, pk="key")


@migrations()
def m017_screening_likelihood(db: Database) -> None:
    # A back-catalogue screening by the likelihood probe keeps its evidence (gain, prompt, per-reference gains)
    # with the hit, where a render screening keeps its renders.
    db["screening_hits"].add_column("likelihood", str)
    db["screenings"].add_column("done", int)  # uploads judged so far, where a screening runs as many jobs


@migrations()
def m018_review_entry_in_code(db: Database) -> None:
    # A quarantined upload's entry into the moderators' queue, and the queue's sort fields, were triggers made
    # in m013; they are code now (gate.record.uploads.update_upload), where a reader finds them.
    db.execute("DROP TRIGGER IF EXISTS uploads_enter_review")
    db.execute("DROP TRIGGER IF EXISTS uploads_review_fields")


@migrations()
def m019_sessions(db: Database) -> None:
    # People's sessions, kept server-side so that signing out, disabling an account or changing its password
    # ends them at once, and each has an absolute end. The cookie holds only the session's random id; the
    # record keeps its SHA-256.
    db["sessions"].create({"id": str, "account_id": int, "created_at": str, "expires_at": str, "ended_at": str,
                           "ended_why": str, "address": str}, pk="id",
                          foreign_keys=[("account_id", "accounts", "id")])
    db["sessions"].create_index(["account_id", "ended_at"])


@migrations()
def m020_scan_stages(db: Database) -> None:
    # Where a live scan is (screening, probing, concluding) and since when, for the status API's progress; the
    # probe times of finished scans (newest last) give its estimate.
    db["uploads"].add_column("stage", str)
    db["uploads"].add_column("stage_at", str)
    db["probe_times"].create({"id": int, "upload_id": str, "at": str, "lane": str, "waited": float, "work": float},
                             pk="id")


@migrations()
def m021_image_sets(db: Database) -> None:
    # Images screened as sets (POST /v1/images, /v1/datasets): the set as the hub sent it, each image's match,
    # and each image's vector by its sha256, so an image sent again is judged without embedding it again.
    db["image_sets"].create({
        "id": str, "kind": str, "delivery_key": str, "hub": str, "model_id": str, "uploader": str, "title": str,
        "filename": str, "file_path": str, "file_sha256": str, "file_size": int, "state": str, "verdict": str,
        "reasons": str, "images": int, "refused": str, "matched": int, "embedded": int, "error_code": str,
        "error_message": str, "created_at": str, "decided_at": str, "review_status": str, "reviewed_by": str,
        "reviewed_at": str, "attempts": int, "updated_at": str, "urls": str}, pk="id")
    db["image_sets"].create_index(["delivery_key"], unique=True)
    db["image_sets"].create_index(["review_status", "created_at"])  # the moderators' list of quarantined sets
    db["set_images"].create({"set_id": str, "position": int, "name": str, "sha256": str, "character_id": str,
                             "score": float, "strong": int, "reference": str}, pk=("set_id", "position"))
    db["set_images"].create_index(["character_id", "set_id"])  # a rights holder's matches, by character
    db["image_vectors"].create({"sha256": str, "embedder": str, "vector": bytes}, pk=("sha256", "embedder"))


@migrations()
def m022_upload_previews(db: Database) -> None:
    # The preview images a hub sent with an upload (`preview` parts): stored by sha256 beside the upload, each
    # embedded once (image_vectors) and judged with the upload, or refused alone with its image code.
    db["upload_previews"].create({"upload_id": str, "position": int, "name": str, "sha256": str, "path": str,
                                  "refused": str}, pk=("upload_id", "position"))


@migrations()
def m023_registry_versions(db: Database) -> None:
    # The registry snapshot a scan's probe was asked to use (set when the probe request goes out, checked when
    # the answer comes back) and what the likelihood probe covered in it: the evidence a decision rests on.
    db["uploads"].add_column("registry_version", str)
    db["uploads"].add_column("likelihood_scope", str)


@migrations()
def m024_matched_regions(db: Database) -> None:
    # Which part of an image matched ([left, top, right, bottom] as JSON; null for the whole image): images are
    # matched by their views (probes/views.py), and the hub and the moderators see where the character was.
    db["set_images"].add_column("region", str)


@migrations()
def m025_reference_regions(db: Database) -> None:
    # Which part of the reference sheet an image matched (references are matched by their views too): the
    # moderator sees the head on the sheet that a portrait matched, not just the sheet.
    db["set_images"].add_column("reference_region", str)
