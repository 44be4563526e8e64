"""The Hugging Face adapter for blocks (off unless GATE_HUGGINGFACE_BLOCK_ACTION is set): when an upload that came
from Hugging Face is finally blocked, make its repo private or gated and open a discussion saying why.

Driven from the record, not from the decision's code path: housekeeping finds blocked Hugging Face uploads
with no actions yet, writes the actions owed (hub_actions), and performs those due, with backoff, until done
or out of attempts. Every attempt is journalled on the upload (upload_events) as well as in hub_actions.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

from gate.config import Settings
from gate.hubs.callbacks import backoff
from gate.record.db import writing
from gate.record.uploads import journal

log = logging.getLogger(__name__)
ACTOR = "huggingface-adapter"
BLOCK_ACTIONS = ("private", "gated")
MAX_ATTEMPTS = 8


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def owe_actions(settings: Settings, db) -> int:
    """Write the actions owed for blocked Hugging Face uploads that have none yet; returns how many uploads."""
    action = settings.huggingface.block_action
    if action not in BLOCK_ACTIONS:
        return 0
    now = _stamp(_now())
    with writing(db):
        blocked = list(db.query(
            "select id, model_id from uploads where hub = 'huggingface' and state = 'decided' and verdict = 'block' "
            "and model_id is not null and id not in (select upload_id from hub_actions)"))
        for upload in blocked:
            for name in (action, "discussion"):
                db["hub_actions"].insert({"upload_id": upload["id"], "hub": "huggingface",
                                          "repo_id": upload["model_id"], "action": name, "state": "pending",
                                          "attempts": 0, "next_attempt_at": now, "created_at": now})
            journal(db, upload["id"], ACTOR, "hub actions owed", None, None,
                    {"repo": upload["model_id"], "actions": [action, "discussion"]})
    return len(blocked)


def _discussion_text(upload: dict) -> tuple[str, str]:
    reasons = json.loads(upload["reasons"] or "[]")
    lines = [f"- {reason.get('message') or reason.get('kind')}" for reason in reasons] or ["- (no reason recorded)"]
    title = f"LoRA Gate blocked {upload['filename']}"
    body = (f"LoRA Gate, the moderation service this Hub's uploads pass through, blocked `{upload['filename']}` "
            f"at revision `{upload['version_id']}` (upload `{upload['id']}`), so the repo was made "
            "unavailable while it is reviewed. Reasons:\n\n" + "\n".join(lines) +
            "\n\nIf you believe this is wrong, reply here or dispute the decision with the hub's moderators.")
    return title, body


def _perform(settings: Settings, db, row: dict) -> str:
    from gate.hubs.huggingface import api
    from gate.record.uploads import get_upload

    hub = api(settings)
    if row["action"] == "private":
        hub.update_repo_settings(row["repo_id"], private=True)
        return "repo made private"
    if row["action"] == "gated":
        hub.update_repo_settings(row["repo_id"], gated="manual")
        return "repo gated (manual approval)"
    title, body = _discussion_text(get_upload(db, row["upload_id"]))
    discussion = hub.create_discussion(row["repo_id"], title=title, description=body)
    return f"discussion #{discussion.num} opened"


def perform_due(settings: Settings, db, limit: int = 20) -> int:
    """Try every action that is due; returns how many were done."""
    done = 0
    now = _now()
    for row in db["hub_actions"].rows_where("state = 'pending' and next_attempt_at <= ?", [_stamp(now)],
                                            order_by="id", limit=limit):
        attempts = (row["attempts"] or 0) + 1
        try:
            result = _perform(settings, db, row)
        except Exception as exc:  # noqa: BLE001 - any failure is retried, and journalled
            error = f"{type(exc).__name__}: {exc}"[:300]
            state = "failed" if attempts >= MAX_ATTEMPTS else "pending"
            with writing(db):
                db["hub_actions"].update(row["id"], {
                    "attempts": attempts, "last_error": error, "state": state,
                    "next_attempt_at": _stamp(now + timedelta(seconds=backoff(attempts)))})
                journal(db, row["upload_id"], ACTOR, f"{row['action']} failed", None, None,
                        {"repo": row["repo_id"], "attempt": attempts, "error": error, "gave_up": state == "failed"})
            log.warning("hub action %s on %s failed (%s)", row["action"], row["repo_id"], error)
            continue
        with writing(db):
            db["hub_actions"].update(row["id"], {"attempts": attempts, "state": "done", "result": result,
                                                 "done_at": _stamp(_now()), "last_error": None})
            journal(db, row["upload_id"], ACTOR, result, None, None, {"repo": row["repo_id"], "attempt": attempts})
        done += 1
    return done


def enforce_blocks(settings: Settings, db) -> int:
    """Housekeeping: owe and perform the Hub actions for blocks; nothing unless block_action is set."""
    if settings.huggingface.block_action not in BLOCK_ACTIONS:
        return 0
    owe_actions(settings, db)
    return perform_due(settings, db)
