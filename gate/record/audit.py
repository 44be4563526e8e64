"""The audit log: who did what, when, why, with the state before and after, for every change a person or a
machine makes to decisions, claims, the registry, policy, disputes and accounts.

Append-only twice over: SQLite triggers refuse UPDATE and DELETE, and each row's hash covers its content and
the previous row's hash, so `verify` finds any row edited or removed behind the triggers' back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlite_utils import Database

from gate.errors import GateError
from gate.record.db import writing

GENESIS = "0" * 64
FIELDS = ("id", "at", "actor", "actor_role", "action", "subject_type", "subject_id", "reason", "before", "after",
          "prev_hash", "hash")


class AuditError(GateError):
    code = "audit_invalid"


@dataclass(frozen=True)
class Actor:
    """Who acts: an account's username and role, or the gate itself."""

    name: str
    role: str


GATE = Actor("gate", "system")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _digest(prev_hash: str, row: dict) -> str:
    content = {k: row[k] for k in FIELDS if k not in ("id", "hash", "prev_hash")}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def record(db: Database, actor: Actor, action: str, subject_type: str, subject_id: str, reason: str = "",
           before: dict | None = None, after: dict | None = None) -> dict:
    """Append one entry; call it inside the transaction that makes the change, so both or neither happen."""
    with writing(db):  # the chain's tail is read and extended under the write lock
        tail = db.execute("select hash from audit_log order by id desc limit 1").fetchone()
        prev_hash = tail[0] if tail else GENESIS
        row = {"at": _now(), "actor": actor.name, "actor_role": actor.role, "action": action,
               "subject_type": subject_type, "subject_id": str(subject_id), "reason": reason or "",
               "before": json.dumps(before, sort_keys=True, ensure_ascii=False) if before is not None else None,
               "after": json.dumps(after, sort_keys=True, ensure_ascii=False) if after is not None else None,
               "prev_hash": prev_hash}
        row["hash"] = _digest(prev_hash, row)
        row["id"] = db["audit_log"].insert(row).last_pk
    return row


def entries(db: Database, subject_type: str | None = None, subject_id: str | None = None,
            limit: int | None = None, newest_first: bool = False) -> list[dict]:
    where, args = [], []
    if subject_type:
        where.append("subject_type = ?")
        args.append(subject_type)
    if subject_id:
        where.append("subject_id = ?")
        args.append(subject_id)
    return list(db["audit_log"].rows_where(" and ".join(where) or None, args,
                                           order_by="id desc" if newest_first else "id", limit=limit))


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    first_bad: int | None = None
    problem: str = ""


def head(db: Database) -> dict | None:
    """The newest entry's id and hash: an anchor to keep outside the record (hubs get one with every message).

    The chain alone shows an edited or removed row, but not the log cut back at its end, nor the whole chain
    recomputed by someone with the file; a hash kept elsewhere does."""
    row = db.execute("select id, hash from audit_log order by id desc limit 1").fetchone()
    return {"id": row[0], "sha256": row[1]} if row else None


def parse_anchor(text: str) -> tuple[int, str]:
    """'ID:SHA256' as `gate audit head` prints it."""
    number, _, digest = text.partition(":")
    if not number.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise AuditError(f"an anchor is ID:SHA256 (as `gate audit head` prints it), not {text[:80]!r}",
                         "anchor_invalid")
    return int(number), digest


def verify(db: Database, anchors: list[tuple[int, str]] | tuple = ()) -> Verification:
    """Walk the chain: every row's hash must match its content and link to the row before it; every anchor
    (an entry's id and hash kept elsewhere) must still be there with that hash."""
    prev_hash, count = GENESIS, 0
    for row in db["audit_log"].rows_where(order_by="id"):
        count += 1
        if row["prev_hash"] != prev_hash:
            return Verification(False, count, row["id"], "does not link to the row before it (a row removed?)")
        if _digest(prev_hash, row) != row["hash"]:
            return Verification(False, count, row["id"], "its content does not match its hash (edited?)")
        prev_hash = row["hash"]
    for number, digest in anchors:
        row = db.execute("select hash from audit_log where id = ?", [number]).fetchone()
        if row is None:
            return Verification(False, count, number, "is anchored but gone (the log cut back?)")
        if row[0] != digest:
            return Verification(False, count, number, "does not match its anchor (the chain rewritten?)")
    return Verification(True, count)


def export(db: Database, fmt: str) -> str:
    """The whole log as CSV or JSON, oldest first, for legal requests."""
    rows = entries(db)
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_safe(row[k]) for k in FIELDS})
        return out.getvalue()
    raise AuditError(f"format must be csv or json, not {fmt!r}", "format_invalid")


def _csv_safe(value):
    """Spreadsheets run cells that start with = + - @ as formulas: a reason typed by anyone must not."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
