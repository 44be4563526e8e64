"""People's sessions end server-side: signing out, an account disabled, a password changed, and an absolute
lifetime that use never extends. A copy of a session's cookie (saved by a browser, a proxy log, malware) is
checked against the record on every request."""

from __future__ import annotations

import re
import threading

import pytest

from gate.record.audit import Actor
from gate.record.db import open_db
from gate.review import accounts
from tests.gate.review.conftest import PASSWORD, login

SETUP = Actor("setup", "shell")


@pytest.fixture
def site(make_app, tmp_path):
    app = make_app(review={"secret_key": "test-secret", "login_max_failures": 5,
                           "login_max_failures_per_address": 5})
    db = open_db(tmp_path / "data" / "gate.db")
    accounts.add_account(db, SETUP, "mod", "moderator", PASSWORD)
    app.record = db
    return app


def _signed_in(app):
    client = app.test_client()
    login(client, "mod")
    return client


def _copy(app, client):
    """Another client holding a copy of `client`'s session cookie."""
    other = app.test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    return other


def _opens_the_queue(client) -> bool:
    return client.get("/queue").status_code == 200


def _logout(client) -> None:
    page = client.get("/queue").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/logout", data={"csrf": token}).status_code == 302


def test_a_cookie_saved_before_logout_opens_nothing_after_it(site):
    client = _signed_in(site)
    saved = _copy(site, client)
    assert _opens_the_queue(saved)
    _logout(client)
    assert not _opens_the_queue(saved) and not _opens_the_queue(client)


def test_signing_out_on_one_device_leaves_the_others_signed_in(site):
    laptop, phone = _signed_in(site), _signed_in(site)
    _logout(laptop)
    assert _opens_the_queue(phone)


@pytest.mark.parametrize("change", ["disable", "password"])
def test_disabling_or_a_new_password_ends_every_session_of_the_account(site, change):
    laptop, phone = _signed_in(site), _signed_in(site)
    saved = _copy(site, laptop)
    if change == "disable":
        accounts.set_disabled(site.record, SETUP, "mod", True, "left the team")
        accounts.set_disabled(site.record, SETUP, "mod", False, "came back")  # re-enabling revives none
    else:
        accounts.set_password(site.record, SETUP, "mod", "another long password", "reset on request")
    assert not any(_opens_the_queue(c) for c in (laptop, phone, saved))
    assert site.record.execute("select count(*) from sessions where ended_at is null").fetchone()[0] == 0
    if change == "password":
        login(site.test_client(), "mod", "another long password")  # the new password signs in


def test_a_session_ends_at_its_absolute_end_however_busy(site):
    client = _signed_in(site)
    end = site.record.execute("select expires_at from sessions").fetchone()[0]
    for _ in range(3):
        assert _opens_the_queue(client)
    assert site.record.execute("select expires_at from sessions").fetchone()[0] == end  # use never extends it
    site.record.execute("update sessions set expires_at = '2000-01-01T00:00:00.000+00:00'")
    site.record.conn.commit()
    assert not _opens_the_queue(client)


def test_a_forged_or_unknown_session_id_opens_nothing(site):
    client = site.test_client()
    with client.session_transaction() as session:  # signed with the app's key, but never started by a sign-in
        session["sid"] = "made-up"
    assert not _opens_the_queue(client)


def test_concurrent_wrong_passwords_check_no_more_than_the_limit(site, monkeypatch):
    """40 wrong sign-ins at once from one address: the limit (5) is reserved before any password is hashed,
    so no more than 5 are checked, however the threads interleave."""
    checked, lock = [], threading.Lock()
    real = accounts.authenticate

    def counting(db, username, password):
        with lock:
            checked.append(username)
        return real(db, username, password)

    monkeypatch.setattr(accounts, "authenticate", counting)
    start, statuses = threading.Barrier(40), []

    def attempt(i: int) -> None:
        client = site.test_client()
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        start.wait()
        response = client.post("/login", data={"username": "mod" if i % 2 else f"user{i}", "password": "guess",
                                               "csrf": token})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 40 and len(checked) <= 5, (len(checked), sorted(statuses))
    assert statuses.count(429) >= 35 and set(statuses) <= {401, 429}
