"""People's sign-in sessions, kept in the record: the cookie carries a random id, the record its SHA-256,
who it belongs to, when it started and when it ends. A session is live only while it has not been ended
(signing out, the account disabled, its password changed) and its absolute lifetime has not run out;
using it never extends it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlite_utils import Database

from gate.record.db import writing


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def start(db: Database, account_id: int, hours: float, address: str = "", now: datetime | None = None) -> str:
    """A new session for an account, live for `hours` from now; returns its id (for the cookie only)."""
    now = now or _now()
    session_id = secrets.token_urlsafe(32)
    with writing(db):
        db["sessions"].insert({"id": _key(session_id), "account_id": account_id, "created_at": _iso(now),
                               "expires_at": _iso(now + timedelta(hours=hours)), "address": address[:64]})
    return session_id


def account_id(db: Database, session_id: str | None, now: datetime | None = None) -> int | None:
    """The account a live session belongs to, else None (unknown, ended or past its end)."""
    if not session_id or len(session_id) > 128:
        return None
    row = db.execute("select account_id, expires_at, ended_at from sessions where id = ?",
                     [_key(session_id)]).fetchone()
    if row is None or row[2] is not None or row[1] <= _iso(now or _now()):
        return None
    return row[0]


def end(db: Database, session_id: str | None, why: str = "signed out") -> None:
    if session_id:
        with writing(db):
            db.execute("update sessions set ended_at = ?, ended_why = ? where id = ? and ended_at is null",
                       [_iso(_now()), why, _key(session_id)])


def end_all(db: Database, account_id: int, why: str) -> int:
    """End every live session of an account (disabled, password changed); returns how many."""
    with writing(db):
        return db.execute("update sessions set ended_at = ?, ended_why = ? where account_id = ? and ended_at is null",
                          [_iso(_now()), why, account_id]).rowcount
