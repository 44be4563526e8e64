"""Sign-in throttling through the real app: per account and address, per address, windows, proxies."""

from __future__ import annotations

import re

import pytest

from gate.record.audit import Actor
from gate.record.db import open_db
from gate.review.accounts import add_account

PASSWORD = "correct horse battery staple"


@pytest.fixture
def app(make_app, tmp_path):
    app = make_app(proxy_hops=1, review={"secret_key": "test-secret", "login_max_failures": 3,
                                         "login_max_failures_per_address": 5, "login_window_minutes": 15})
    db = open_db(tmp_path / "data" / "gate.db")
    for name in ("mod", "mod2", "mod3"):
        add_account(db, Actor("setup", "shell"), name, "moderator", password=PASSWORD)
    app.record = db
    return app


def attempt(app, username: str, password: str, address: str = "203.0.113.7"):
    client = app.test_client()
    headers = {"X-Forwarded-For": address}  # one trusted proxy hop: the client's address comes from it
    page = client.get("/login", headers=headers).get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    return client.post("/login", data={"username": username, "password": password, "csrf": token}, headers=headers)


def test_after_too_many_failures_even_the_right_password_waits(app):
    for _ in range(3):
        assert attempt(app, "mod", "guess").status_code == 401
    refused = attempt(app, "mod", PASSWORD)
    assert refused.status_code == 429 and "login_throttled" in refused.get_data(as_text=True)
    assert 14 * 60 < int(refused.headers["Retry-After"]) <= 15 * 60
    assert attempt(app, "MOD ", PASSWORD).status_code == 429  # usernames compare as sign-in does


def test_a_guesser_elsewhere_does_not_lock_the_moderator_out(app):
    for _ in range(3):
        attempt(app, "mod", "guess", address="198.51.100.9")
    assert attempt(app, "mod", PASSWORD, address="203.0.113.7").status_code == 302


def test_a_right_password_clears_the_count(app):
    attempt(app, "mod", "guess")
    attempt(app, "mod", "guess")
    assert attempt(app, "mod", PASSWORD).status_code == 302
    attempt(app, "mod", "guess")
    attempt(app, "mod", "guess")
    assert attempt(app, "mod", PASSWORD).status_code == 302  # the window's count started again


def test_one_address_trying_many_names_is_stopped(app):
    for name in ("mod", "mod2", "mod3", "nobody", "admin"):
        assert attempt(app, name, "guess").status_code == 401
    assert attempt(app, "mod3", PASSWORD).status_code == 429
    assert attempt(app, "mod3", PASSWORD, address="192.0.2.44").status_code == 302


def test_the_window_runs_out(app):
    for _ in range(3):
        attempt(app, "mod", "guess")
    assert attempt(app, "mod", PASSWORD).status_code == 429
    app.record.execute("update login_failures set window_start = window_start - 15 * 60")
    app.record.conn.commit()
    assert attempt(app, "mod", PASSWORD).status_code == 302
