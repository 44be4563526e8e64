"""Accounts: people who sign in (moderator, operator, admin, rights holder) and machines with API tokens (hub).

Passwords are hashed with werkzeug.security; API tokens are random and stored only as their sha256.
Every change to an account is audited.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum

from sqlite_utils import Database
from werkzeug.security import check_password_hash, generate_password_hash

from gate.errors import GateError
from gate.record import audit
from gate.record.audit import Actor
from gate.record.db import writing
from gate.review import sessions


class Role(StrEnum):
    MODERATOR = "moderator"
    OPERATOR = "operator"
    ADMIN = "admin"
    RIGHTS_HOLDER = "rights_holder"
    HUB = "hub"


# What each role may do. A moderator cannot do an operator's or an admin's job; machines and rights holders
# never see the queue.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "queue.view": frozenset({Role.MODERATOR, Role.OPERATOR, Role.ADMIN}),
    "queue.decide": frozenset({Role.MODERATOR, Role.OPERATOR, Role.ADMIN}),
    "queue.bulk": frozenset({Role.MODERATOR, Role.OPERATOR, Role.ADMIN}),
    "queue.decide_escalated": frozenset({Role.OPERATOR, Role.ADMIN}),
    "audit.export": frozenset({Role.ADMIN}),
    "characters.own": frozenset({Role.RIGHTS_HOLDER}),
    "dispute.file": frozenset({Role.HUB}),
}
PEOPLE = (Role.MODERATOR, Role.OPERATOR, Role.ADMIN, Role.RIGHTS_HOLDER)
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.@-]{1,63}$")
MIN_PASSWORD = 10


class AccountError(GateError):
    code = "account_invalid"


class AuthError(GateError):
    code = "unauthenticated"


class Forbidden(GateError):
    code = "forbidden"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def allowed(role: str | None, permission: str) -> bool:
    return role is not None and role in PERMISSIONS[permission]


def _public(row: dict) -> dict:
    return {k: row[k] for k in ("id", "username", "role", "party", "disabled", "created_at", "updated_at")}


def get_account(db: Database, username: str) -> dict:
    rows = list(db["accounts"].rows_where("username = ?", [username]))
    if not rows:
        raise AccountError(f"no account {username!r}", "account_not_found")
    return rows[0]


def account_by_id(db: Database, account_id: int) -> dict | None:
    rows = list(db["accounts"].rows_where("id = ?", [account_id]))
    return rows[0] if rows else None


def add_account(db: Database, actor: Actor, username: str, role: str, password: str | None = None,
                party: str | None = None) -> dict:
    """Create an account; people need a password, rights holders and hubs the party they speak for."""
    username = username.strip().lower()
    if not _USERNAME.match(username):
        raise AccountError("a username is 2-64 characters: lowercase letters, digits, _ . @ -")
    try:
        role = Role(role)
    except ValueError:
        raise AccountError(f"role must be one of {', '.join(Role)}, not {role!r}", "role_invalid") from None
    if role in PEOPLE:
        if not password or len(password) < MIN_PASSWORD:
            raise AccountError(f"a person's account needs a password of at least {MIN_PASSWORD} characters",
                               "password_weak")
    elif password:
        raise AccountError("hub accounts sign in with API tokens, not passwords")
    if role == Role.RIGHTS_HOLDER and not (party or "").strip():
        raise AccountError("a rights holder account needs --party: the rights holder it speaks for")
    if role == Role.HUB:
        party = (party or username).strip()
    now = _now()
    with writing(db):
        if db["accounts"].count_where("username = ?", [username]):
            raise AccountError(f"an account {username!r} exists already", "account_exists")
        row = {"username": username, "role": str(role),
               "password_hash": generate_password_hash(password) if password else None,
               "party": (party or "").strip() or None, "disabled": 0, "created_at": now,
               "updated_at": now}
        row["id"] = db["accounts"].insert(row).last_pk
        audit.record(db, actor, "account.create", "account", username, "", None, _public(row))
    return row


def list_accounts(db: Database) -> list[dict]:
    return [_public(row) for row in db["accounts"].rows_where(order_by="username")]


def set_disabled(db: Database, actor: Actor, username: str, disabled: bool, reason: str) -> dict:
    """Disable (or re-enable) an account: its sessions end and its tokens stop working at once."""
    if not reason.strip():
        raise AccountError("say why", "reason_missing")
    with writing(db):
        before = get_account(db, username)
        db["accounts"].update(before["id"], {"disabled": int(disabled), "updated_at": _now()})
        sessions.end_all(db, before["id"], "account disabled" if disabled else "account re-enabled")
        after = get_account(db, username)
        audit.record(db, actor, "account.disable" if disabled else "account.enable", "account", username, reason,
                     _public(before), _public(after))
    return after


def set_password(db: Database, actor: Actor, username: str, password: str, reason: str) -> dict:
    """A person's new password: every session of the account ends at once (wherever it was signed in)."""
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"a password has at least {MIN_PASSWORD} characters", "password_weak")
    if not reason.strip():
        raise AccountError("say why", "reason_missing")
    with writing(db):
        before = get_account(db, username)
        if before["role"] not in PEOPLE:
            raise AccountError("hub accounts sign in with API tokens, not passwords")
        db["accounts"].update(before["id"], {"password_hash": generate_password_hash(password), "updated_at": _now()})
        ended = sessions.end_all(db, before["id"], "password changed")
        after = get_account(db, username)
        audit.record(db, actor, "account.password", "account", username, f"{reason} ({ended} sessions ended)",
                     _public(before), _public(after))
    return after


def authenticate(db: Database, username: str, password: str) -> dict:
    """The account for a username and password, or AuthError (the same message whichever was wrong)."""
    rows = list(db["accounts"].rows_where("username = ?", [username.strip().lower()]))
    row = rows[0] if rows else None
    # An unknown name costs a hash check too, so response times do not tell which usernames exist.
    stored = row["password_hash"] if row and row["password_hash"] else _dummy_hash()
    if not check_password_hash(stored, password) or row is None or not row["password_hash"]:
        raise AuthError("wrong username or password", "login_failed")
    if row["disabled"]:
        raise AuthError("this account is disabled", "account_disabled")
    return row


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Database, actor: Actor, username: str, name: str = "") -> tuple[str, dict]:
    """A new API token for an account; the token is returned once and only its sha256 is kept."""
    account = get_account(db, username)
    if account["role"] not in (Role.HUB, Role.RIGHTS_HOLDER):
        raise AccountError("API tokens are for hubs and rights holders; people sign in", "token_role_invalid")
    token = f"gt_{secrets.token_urlsafe(32)}"
    with writing(db):
        row = {"account_id": account["id"], "name": name or None, "token_sha256": _token_sha256(token),
               "created_at": _now()}
        row["id"] = db["api_tokens"].insert(row).last_pk
        audit.record(db, actor, "token.create", "account", username, name,
                     None, {"token_id": row["id"], "name": name or None})
    return token, row


def revoke_token(db: Database, actor: Actor, token_id: int, reason: str) -> dict:
    if not reason.strip():
        raise AccountError("say why", "reason_missing")
    with writing(db):
        rows = list(db["api_tokens"].rows_where("id = ?", [token_id]))
        if not rows:
            raise AccountError(f"no token {token_id}", "token_not_found")
        before = rows[0]
        db["api_tokens"].update(token_id, {"revoked_at": before["revoked_at"] or _now()})
        account = account_by_id(db, before["account_id"])
        audit.record(db, actor, "token.revoke", "account", account["username"], reason,
                     {"token_id": token_id, "revoked_at": before["revoked_at"]},
                     {"token_id": token_id, "revoked_at": db["api_tokens"].get(token_id)["revoked_at"]})
    return db["api_tokens"].get(token_id)


def tokens(db: Database) -> list[dict]:
    return list(db.query("select t.id, a.username, t.name, t.created_at, t.revoked_at, t.last_used_at "
                         "from api_tokens t join accounts a on a.id = t.account_id order by t.id"))


def account_for_token(db: Database, token: str) -> dict:
    """The live account a bearer token belongs to, or AuthError."""
    rows = list(db.query("select a.*, t.id as token_id, t.revoked_at from api_tokens t "
                         "join accounts a on a.id = t.account_id where t.token_sha256 = ?", [_token_sha256(token)]))
    if not rows or rows[0]["revoked_at"]:
        raise AuthError("the API token is unknown or revoked", "token_invalid")
    if rows[0]["disabled"]:
        raise AuthError("this account is disabled", "account_disabled")
    return rows[0]
