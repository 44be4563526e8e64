"""The quarantine queue: what waits for a person, claims on it, decisions, bulk decisions and disputes.

Every change here is one transaction holding the change itself, its audit row, its journal row and, where the
hub must hear of it, its outbox message. Decisions feed back into scanning: a block puts the tensor hash on
the blocklist; an allow remembers the false positive (tensor hash + character) in `cleared`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from sqlite_utils import Database

from gate import jsontext
from gate.detection.decisions import judged_by
from gate.detection.matching import Thresholds
from gate.errors import GateError
from gate.record import audit, outbox
from gate.record.audit import Actor
from gate.record.db import writing
from gate.record.uploads import get_upload, hub_message, journal, update_upload
from gate.registry import blocklist
from gate.review.accounts import Forbidden, allowed
from gate.review.feedback import feed_back_allow, feed_back_block
from probes.likelihood import CharacterGain

PAGE_SIZE = 50
BULK_LIMIT = 500
MAX_REASON = 2000
MAX_STATEMENT = 10_000


class ReviewStatus(StrEnum):
    QUARANTINED = "quarantined"
    DISPUTED = "disputed"
    ESCALATED = "escalated"


class Action(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    ESCALATE = "escalate"


class ReviewError(GateError):
    code = "review_invalid"


class ClaimConflict(GateError):
    code = "claimed_by_other"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def now_iso() -> str:
    return _iso(_now())


# --- the queue: filters, sorts, keyset pages ----------------------------------------------------------------

SORTS = {  # name -> (column, descending); every sort ends in id so the order is total and pages never overlap
    "oldest": ("created_at", False),
    "newest": ("created_at", True),
    "score": ("review_score", True),
}
FILTERS = ("character", "rights_holder", "hub", "uploader")
FILTER_COLUMNS = {"character": "review_character", "rights_holder": "review_rights_holder", "hub": "hub",
                  "uploader": "uploader"}


NUMBER = re.compile(r"[+-]?[0-9]{1,9}(?:\.[0-9]{1,9})?")


@dataclass(frozen=True)
class QueueQuery:
    status: str = ReviewStatus.QUARANTINED
    sort: str = "oldest"
    character: str = ""
    rights_holder: str = ""
    hub: str = ""
    uploader: str = ""
    min_score: float | None = None
    older_than_hours: float | None = None  # age filter: only items waiting at least this long

    @classmethod
    def from_args(cls, args) -> QueueQuery:
        """From request arguments (a mapping of strings); anything malformed is a typed error."""
        status_ = args.get("status") or ReviewStatus.QUARANTINED
        if status_ not in set(ReviewStatus):
            raise ReviewError(f"status must be one of {', '.join(ReviewStatus)}", "filter_invalid")
        sort = args.get("sort") or "oldest"
        if sort not in SORTS:
            raise ReviewError(f"sort must be one of {', '.join(SORTS)}", "filter_invalid")
        numbers = {}
        for name in ("min_score", "older_than_hours"):
            raw = (args.get(name) or "").strip()
            if raw:  # ASCII digits only: float() also takes '١٢', 'inf', 'nan' and '1_0'
                if not NUMBER.fullmatch(raw):
                    raise ReviewError(f"{name} must be a number such as 0.8 or 24", "filter_invalid")
                numbers[name] = float(raw)
        texts = {name: (args.get(name) or "").strip()[:200] for name in FILTERS}
        return cls(status=status_, sort=sort, **texts, **numbers)

    def args(self, **changes) -> dict:
        """As request arguments (for links), without the empty ones."""
        values = {**self.__dict__, **changes}
        return {k: v for k, v in values.items() if v not in ("", None)}

    def where(self) -> tuple[list[str], list]:
        clauses, params = ["review_status = ?"], [self.status]
        for name in FILTERS:
            if getattr(self, name):
                clauses.append(f"{FILTER_COLUMNS[name]} = ?")
                params.append(getattr(self, name))
        if self.min_score is not None:
            clauses.append("review_score >= ?")
            params.append(self.min_score)
        if self.older_than_hours is not None:
            clauses.append("created_at <= ?")
            params.append(_iso(_now() - timedelta(hours=self.older_than_hours)))
        return clauses, params


def encode_cursor(value, row_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([value, row_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[object, str]:
    try:
        if len(cursor) > 512 or not cursor.isascii():
            raise ValueError
        value, row_id = jsontext.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), "the cursor",
                                       max_depth=1)
        if not isinstance(row_id, str) or not isinstance(value, str | int | float):
            raise ValueError
    except (ValueError, TypeError, jsontext.JsonInvalid):
        raise ReviewError("the page cursor is malformed; start again from the first page", "cursor_invalid") from None
    return value, row_id


QUEUE_COLUMNS = ("id, created_at, hub, uploader, title, filename, verdict, review_status, review_score, "
                 "review_character, review_rights_holder, claimed_by, claimed_until, dispute_deadline, tensor_hash")


@dataclass
class Page:
    items: list[dict]
    next_cursor: str | None
    prev_cursor: str | None
    total: int


def queue_page(db: Database, query: QueueQuery, after: str | None = None, before: str | None = None,
               last: bool = False, size: int = PAGE_SIZE, with_total: bool = True) -> Page:
    """One page of the queue by keyset (seek) pagination: an index range from the cursor, never an OFFSET,
    so the last page of 100,000 items costs what the first does."""
    column, descending = SORTS[query.sort]
    clauses, params = query.where()
    backwards = bool(before) or last
    cursor = after or before
    if cursor:
        value, row_id = decode_cursor(cursor)
        forward_op = "<" if descending else ">"
        op = {"<": ">", ">": "<"}[forward_op] if backwards else forward_op
        clauses.append(f"({column}, id) {op} (?, ?)")
        params += [value, row_id]
    direction = "desc" if descending != backwards else "asc"
    sql = (f"select {QUEUE_COLUMNS} from uploads where {' and '.join(clauses)} "
           f"order by {column} {direction}, id {direction} limit ?")
    rows = [dict(row) for row in db.query(sql, [*params, size + 1])]
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
    total = count(db, query) if with_total else -1
    if not rows:
        return Page([], None, None, total)
    has_next = (more if not backwards else True) and not last
    has_prev = (more if backwards else bool(after))
    first_key, last_key = rows[0], rows[-1]
    return Page(rows,
                encode_cursor(last_key[column], last_key["id"]) if has_next else None,
                encode_cursor(first_key[column], first_key["id"]) if has_prev else None,
                total)


def count(db: Database, query: QueueQuery) -> int:
    """Items matching the query; unfiltered, the tab's kept count (no scan of the index)."""
    clauses, params = query.where()
    if len(clauses) == 1:
        return counts(db)[query.status]
    return db.execute(f"select count(*) from uploads where {' and '.join(clauses)}", params).fetchone()[0]


def counts(db: Database) -> dict[str, int]:
    """Items waiting, by review status (the queue's tabs), as the record's triggers keep them."""
    found = {str(s): 0 for s in ReviewStatus}
    for status_, n in db.execute("select status, n from review_counts").fetchall():
        found[status_] = n
    return found


def facets(db: Database, status_: str, column: str, limit: int = 50) -> list[str]:
    """The values a filter can take among the items of one status (for the filter's choices)."""
    return [row[0] for row in db.execute(
        f"select distinct {FILTER_COLUMNS[column]} from uploads where review_status = ? and "
        f"{FILTER_COLUMNS[column]} is not null order by 1 limit ?", [status_, limit]).fetchall()]


# --- one item ----------------------------------------------------------------------------------------------

def evidence_rows(evidence: Path) -> list[dict]:
    """The evidence rows the scan wrote: probe render, base render, matched reference, scores."""
    described = evidence / "evidence.json"
    if described.exists():
        return json.loads(described.read_text()).get("rows", [])
    rows = []
    for render in sorted(evidence.glob("*_render.png")):  # evidence written before evidence.json existed
        index = render.name.split("_", 1)[0]
        rows.append({"render": render.name, "base": f"{index}_base.png",
                     "reference": f"{index}_reference.png" if (evidence / f"{index}_reference.png").exists()
                     else None})
    return rows


def item(db: Database, upload_id: str, evidence: Path) -> dict:
    """Everything a moderator needs to decide one upload: evidence, static signals, the uploader's history."""
    upload = get_upload(db, upload_id)
    reasons = json.loads(upload["reasons"] or "[]")
    described = json.loads((evidence / "evidence.json").read_text()) if (evidence / "evidence.json").exists() else {}
    history = []
    if upload["uploader"]:
        history = [dict(r) for r in db.query(
            "select id, created_at, title, verdict, review_status, tensor_hash from uploads "
            "where uploader = ? and coalesce(hub, '') = coalesce(?, '') and id != ? "
            "order by created_at desc limit 20", [upload["uploader"], upload["hub"], upload_id])]
    repeats = []
    if upload["tensor_hash"]:
        repeats = [dict(r) for r in db.query(
            "select id, created_at, hub, uploader, verdict from uploads where tensor_hash = ? and id != ? "
            "order by created_at desc limit 20", [upload["tensor_hash"], upload_id])]
    return {
        "upload": upload, "reasons": reasons, "matches": json.loads(upload["matches"] or "[]"),
        "metadata_hits": _name_hits(described, reasons),
        "likelihood": _likelihood(described), "thresholds": described.get("thresholds") or {},
        "drawn": described.get("drawn") or [],
        "intake": described.get("intake", {}), "evidence": evidence_rows(evidence),
        "history": history, "earlier_blocks": sum(1 for r in history if r["verdict"] == "block"),
        "repeats": repeats, "blocklisted": blocklist.contains(db, upload["tensor_hash"] or ""),
        "audit": audit.entries(db, "upload", upload_id, newest_first=True),
        "tags": json.loads(upload["tags"] or "[]"),
        "previews": _previews(db, upload_id, reasons),
    }


def _previews(db: Database, upload_id: str, reasons: list[dict]) -> list[dict]:
    """The hub's preview images of the upload, each with the character a preview_match reason saw in it."""
    seen = {name: r.get("character") for r in reasons if r.get("kind") == "preview_match"
            for name in r.get("previews", [])}
    matched = {m["preview"]: m for r in reasons if r.get("kind") == "preview_match" for m in r.get("matched", [])}
    return [{**row, "shows": seen.get(row["name"]), "matched": matched.get(row["name"])}
            for row in db["upload_previews"].rows_where("upload_id = ?", [upload_id], order_by="position")]


# --- claims ------------------------------------------------------------------------------------------------

def _claim_live(upload: dict, now: datetime) -> bool:
    return bool(upload["claimed_by"]) and (upload["claimed_until"] or "") > _iso(now)


def claim(db: Database, actor: Actor, upload_id: str, minutes: int) -> dict:
    """Take an item so no one else works it at once; the claim lapses after `minutes`."""
    with writing(db):
        upload = _in_queue(db, upload_id)
        now = _now()
        if _claim_live(upload, now) and upload["claimed_by"] != actor.name:
            raise ClaimConflict(f"{upload['claimed_by']} is working on this item until {upload['claimed_until']}")
        until = _iso(now + timedelta(minutes=minutes))
        db["uploads"].update(upload_id, {"claimed_by": actor.name, "claimed_until": until})
        audit.record(db, actor, "claim", "upload", upload_id, "",
                     {"claimed_by": upload["claimed_by"], "claimed_until": upload["claimed_until"]},
                     {"claimed_by": actor.name, "claimed_until": until})
    return get_upload(db, upload_id)


def release(db: Database, actor: Actor, upload_id: str) -> dict:
    with writing(db):
        upload = _in_queue(db, upload_id)
        if upload["claimed_by"] != actor.name:
            raise ClaimConflict("you do not hold this item's claim")
        db["uploads"].update(upload_id, {"claimed_by": None, "claimed_until": None})
        audit.record(db, actor, "release", "upload", upload_id, "",
                     {"claimed_by": upload["claimed_by"], "claimed_until": upload["claimed_until"]},
                     {"claimed_by": None, "claimed_until": None})
    return get_upload(db, upload_id)


def _in_queue(db: Database, upload_id: str) -> dict:
    upload = get_upload(db, upload_id)
    if not upload["review_status"]:
        raise ReviewError(f"upload {upload_id} is not waiting for review", "not_in_queue")
    return upload


# --- decisions ---------------------------------------------------------------------------------------------

REVIEW_FIELDS = ("verdict", "review_status", "claimed_by", "claimed_until", "reviewed_by", "reviewed_at",
                 "dispute_deadline")


def _snapshot(upload: dict) -> dict:
    return {k: upload[k] for k in REVIEW_FIELDS}


def check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError("a decision needs a reason (it is kept in the audit log and sent to the hub)",
                          "reason_missing")
    if len(reason) > MAX_REASON:
        raise ReviewError(f"keep the reason under {MAX_REASON} characters", "reason_too_long")
    return reason


def decide(db: Database, actor: Actor, upload_id: str, action: str, reason: str) -> dict:
    """Allow, block or escalate one queued upload, in one transaction with its audit row, journal and hub message."""
    try:
        action = Action(action)
    except ValueError:
        raise ReviewError(f"action must be one of {', '.join(Action)}", "action_invalid") from None
    reason = check_reason(reason)
    with writing(db):
        before = _in_queue(db, upload_id)
        if before["review_status"] == ReviewStatus.ESCALATED and not allowed(actor.role, "queue.decide_escalated"):
            raise Forbidden("an escalated item is decided by an operator or an admin")
        if _claim_live(before, _now()) and before["claimed_by"] != actor.name:
            raise ClaimConflict(f"{before['claimed_by']} is working on this item until {before['claimed_until']}")
        now = _iso(_now())
        changes = {"claimed_by": None, "claimed_until": None, "reviewed_by": actor.name, "reviewed_at": now}
        if action == Action.ESCALATE:
            changes["review_status"] = ReviewStatus.ESCALATED
        else:
            changes.update(verdict=str(action), review_status=None, decided_at=now, updated_at=now)
        after = update_upload(db, upload_id, changes)
        if action == Action.BLOCK:
            feed_back_block(db, actor, before, reason)
        elif action == Action.ALLOW:
            feed_back_allow(db, actor, before, reason)
        disputed = before["review_status"] == ReviewStatus.DISPUTED or bool(before["disputed_at"])
        journal(db, upload_id, actor.name, f"review {action}", before["state"], after["state"],
                {"reason": reason, "verdict": after["verdict"], "role": actor.role})
        audit.record(db, actor, f"decision.{action}", "upload", upload_id, reason, _snapshot(before),
                     _snapshot(after))
        if action != Action.ESCALATE:
            message = {**hub_message(after), "review": {"action": str(action), "reason": reason, "at": now}}
            if disputed:
                message["dispute"] = {"outcome": "reinstated" if action == Action.ALLOW else "upheld",
                                      "statement": before["dispute_statement"]}
                outbox.enqueue(db, upload_id, "dispute.resolved", message)
            else:
                outbox.enqueue(db, upload_id, "upload.reviewed", message)
    return after


def bulk_candidates(db: Database, query: QueueQuery, limit: int = BULK_LIMIT) -> list[dict]:
    """The items a bulk action on a filtered set would touch (shown on the confirmation page, at most `limit`)."""
    page = queue_page(db, query, size=limit)
    return page.items


@dataclass
class BulkResult:
    done: list[str]
    skipped: dict[str, str]


def decide_many(db: Database, actor: Actor, upload_ids: list[str], action: str, reason: str) -> BulkResult:
    """The same decision for each confirmed item; an item someone else claimed, or that left the queue, is
    skipped and said so, never decided over."""
    if len(upload_ids) > BULK_LIMIT:
        raise ReviewError(f"at most {BULK_LIMIT} items at once", "bulk_too_large")
    check_reason(reason)
    result = BulkResult([], {})
    for upload_id in upload_ids:
        try:
            decide(db, actor, upload_id, action, reason)
        except (ClaimConflict, Forbidden, ReviewError) as exc:
            if exc.code in ("action_invalid",):
                raise
            result.skipped[upload_id] = exc.code
        else:
            result.done.append(upload_id)
    return result


# --- disputes ----------------------------------------------------------------------------------------------

def file_dispute(db: Database, hub: dict, upload_id: str, statement: str, deadline_days: int) -> dict:
    """A hub passes on its uploader's dispute of a block or quarantine: the item returns to the queue, disputed,
    with a deadline; the hub is told the deadline now and the outcome when a moderator decides."""
    statement = (statement or "").strip() if isinstance(statement, str) else ""
    if not statement:
        raise ReviewError("a dispute needs the uploader's statement", "statement_missing")
    if len(statement) > MAX_STATEMENT:
        raise ReviewError(f"keep the statement under {MAX_STATEMENT} characters", "statement_too_long")
    actor = Actor(hub["username"], hub["role"])
    with writing(db):
        before = get_upload(db, upload_id)
        if (before["hub"] or "") != (hub["party"] or ""):
            # Another hub's upload: answer as if it did not exist, so ids cannot be probed across hubs.
            raise GateError(f"no upload {upload_id!r}", "upload_not_found")
        if before["state"] != "decided" or before["verdict"] not in ("block", "quarantine"):
            raise ReviewError("only a blocked or quarantined upload can be disputed", "dispute_not_allowed")
        if before["review_status"] == ReviewStatus.DISPUTED:
            raise ReviewError("this upload's dispute is already waiting for a moderator", "dispute_exists")
        now = _now()
        deadline = _iso(now + timedelta(days=deadline_days))
        after = update_upload(db, upload_id, {
            "review_status": ReviewStatus.DISPUTED, "dispute_statement": statement, "disputed_at": _iso(now),
            "dispute_deadline": deadline, "claimed_by": None, "claimed_until": None})
        journal(db, upload_id, actor.name, "disputed", before["state"], after["state"],
                {"statement": statement[:500], "deadline": deadline})
        audit.record(db, actor, "dispute.file", "upload", upload_id, statement, _snapshot(before), _snapshot(after))
        outbox.enqueue(db, upload_id, "dispute.received", {**hub_message(after), "dispute": {
            "statement": statement, "deadline": deadline, "filed_at": _iso(now)}})
    return after


def _name_hits(described: dict, reasons: list[dict]) -> list[str]:
    """Where the LoRA's words name a registered character, each once: "Astro Boy: file name 'astro_v2'".
    Evidence from before 2026-12-06 kept no name hits: its name reasons stand in for them."""
    if "name_hits" in described:
        return [f"{hit['name']}: {hit['field']} {hit['text']!r}" for hit in described["name_hits"]]
    return [r["message"] for r in reasons if r.get("kind") == "metadata_name"]


def _likelihood(described: dict, shown: int = 8) -> list[dict]:
    """The likelihood probe's strongest characters, each with where its gain falls against the thresholds the
    scan was judged by (a part's or another strength's where the scan had them, as the decision judged it):
    below quarantine, quarantine, or block (the character's policy)."""
    limits = described.get("thresholds") or {}
    thresholds = Thresholds.from_dict(limits) if "render_score" in limits else None
    gains = []
    for gain in (described.get("likelihood") or [])[:shown]:
        value, quarantine, block, _ = (judged_by(CharacterGain.from_dict(gain), thresholds) if thresholds
                                       else (gain["gain"], None, None, False))
        if quarantine is None:
            band = "not judged (no calibrated threshold)"
        elif gain["screened"]:
            band = "screened on its first references only: not grounds for a decision"
        elif block is not None and value >= block:
            band = "over the block threshold"
        elif value >= quarantine:
            band = "between quarantine and block"
        else:
            band = "below the quarantine threshold"
        gains.append({**gain, "band": band})
    return gains


def character_names(db: Database) -> dict[str, str]:
    """Registered characters' display names by id, for pages that hold ids."""
    return {row["id"]: row["name"] for row in db.query("select id, name from characters")}


def with_claim_state(rows: list[dict], viewer: str) -> list[dict]:
    """Mark each row's claim as mine / other / none (a lapsed claim counts as none)."""
    now = _iso(_now())
    marked = []
    for row in rows:
        live = bool(row["claimed_by"]) and (row["claimed_until"] or "") > now
        marked.append({**row, "claim": "none" if not live else ("mine" if row["claimed_by"] == viewer else "other")})
    return marked


def age(moment: str | None) -> str:
    """How long ago, for people: '3 h', '2 d'."""
    if not moment:
        return ""
    seconds = (_now() - datetime.fromisoformat(moment)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return "now"
