"""Signing in and being allowed: sessions for people (kept in the record, their id in a signed cookie, CSRF on
every form), bearer tokens for machines, and the decorators every moderator, admin, rights holder and hub
endpoint goes through."""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Blueprint, Flask, g, redirect, render_template, request, session, url_for

from gate.errors import GateError
from gate.record.audit import Actor
from gate.review import accounts, login_throttle, sessions
from gate.review.accounts import AuthError, Forbidden
from gate.web.context import db, settings

bp = Blueprint("auth", __name__, template_folder="templates")
log = logging.getLogger(__name__)


class CsrfError(GateError):
    code = "csrf_failed"


def _secret_key(app: Flask) -> str:
    """The configured key, else one made once and kept beside the record (so sessions survive restarts)."""
    config = app.config["GATE_SETTINGS"]
    if config.review.secret_key:
        return config.review.secret_key
    path = config.data_dir / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


@bp.record_once
def _configure(state) -> None:
    app, config = state.app, state.app.config["GATE_SETTINGS"].review
    app.secret_key = _secret_key(app)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=config.session_cookie_secure,
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_hours))
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["viewer"] = lambda: g.get("account")
    from gate.review.queue import age

    app.jinja_env.filters["age"] = age


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    """Every form post carries the session's token (hand-rolled: one per session, compared in constant time)."""
    sent = request.form.get("csrf", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):  # bytes: any text compares
        raise CsrfError("the form expired or did not come from this site; reload the page and try again")


def person() -> dict | None:
    """The signed-in person, if the session is live (account enabled, not signed out everywhere)."""
    if "account" in g:
        return g.account
    g.account = None
    account_id = sessions.account_id(db(), session.get("sid"))  # live: not ended, not past its absolute end
    if account_id is not None:
        row = accounts.account_by_id(db(), account_id)
        if row and not row["disabled"] and row["role"] in accounts.PEOPLE:
            g.account = row
    return g.account


def actor(account: dict) -> Actor:
    return Actor(account["username"], account["role"])


def people(permission: str):
    """For pages: anonymous → the login page (then back); a signed-in person without the role → 403.
    Form posts must carry the CSRF token."""
    def wrap(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            account = person()
            if account is None:
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not accounts.allowed(account["role"], permission):
                raise Forbidden(f"a {account['role']} cannot do this")
            if request.method == "POST":
                check_csrf()
            return view(*args, **kwargs)
        return guarded
    return wrap


def machine(permission: str):
    """For the JSON API: `Authorization: Bearer <token>` of an account with the role, else 401/403 (JSON)."""
    def wrap(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or len(header) > 512:
                raise AuthError("send Authorization: Bearer <API token>", "token_missing")
            account = accounts.account_for_token(db(), header[7:].strip())
            if not accounts.allowed(account["role"], permission):
                raise Forbidden(f"a {account['role']} token cannot do this")
            g.account = account
            return view(*args, **kwargs)
        return guarded
    return wrap


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect to somewhere else."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc \
            or "\\" in target:
        return url_for("review.queue")
    return target


def _home(account: dict) -> str:
    return url_for("rights.overview") if account["role"] == accounts.Role.RIGHTS_HOLDER else url_for("review.queue")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with a username and password."""
    error = None
    if request.method == "POST":
        username, address = request.form.get("username", "")[:100], request.remote_addr or "unknown"
        throttle = settings().review
        try:
            check_csrf()
            login_throttle.reserve(db(), username, address, throttle)  # counted before the hash is checked
            account = accounts.authenticate(db(), username, request.form.get("password", "")[:1000])
        except GateError as exc:
            error = exc
            if exc.code in ("login_failed", "account_disabled"):
                log.warning("failed sign-in for %r from %s", username, address)
        else:
            login_throttle.succeeded(db(), username, address, throttle)
            session.clear()  # a fresh session on sign-in: nothing planted before it survives
            session.permanent = True
            session.update(sid=sessions.start(db(), account["id"], throttle.session_hours, address),
                           csrf=secrets.token_urlsafe(32))
            target = request.args.get("next")
            return redirect(_safe_next(target) if target else _home(account))
    status = 401 if error is not None and error.code in ("login_failed", "account_disabled") else 200
    if error is not None and error.code == "csrf_failed":
        status = 403
    page = render_template("review/login.html", error=error, next=request.args.get("next", ""))
    if isinstance(error, login_throttle.Throttled):
        return page, 429, {"Retry-After": str(error.retry_after)}
    return page, status


@bp.post("/logout")
def logout():
    """Sign out (a form post with the CSRF token): the session ends in the record, so a copy of its cookie
    opens nothing."""
    if person() is not None:
        check_csrf()
        sessions.end(db(), session.get("sid"))
    session.clear()
    return redirect(url_for("auth.login"))


def render_error(exc: GateError):
    """A typed error as a page (for people) with the HTTP status the JSON API would use."""
    status = exc.http_status
    if exc.code in ("unauthenticated",):
        return redirect(url_for("auth.login"))
    return render_template("review/error.html", error=exc), status


bp.register_error_handler(GateError, render_error)
